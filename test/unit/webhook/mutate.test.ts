import { describe, expect, it } from 'vitest';
import jsonpatch, { type Operation } from 'fast-json-patch';
import { mutate, HOOK_SIDECARS_ANNOTATION, imageRepository } from '../../../webhooks/mutate.js';
import { InformerImageCatalog } from '../../../webhooks/catalog.js';
import type { AdmissionRequest, AdmissionResponse } from '../../../webhooks/admission-review.js';
import { escapePointerToken, setAt } from '../../../webhooks/jsonpatch.js';
import { VHOST_SLOT_RESOURCE, VOLUMES_ANNOTATION } from '../../../src/api/volumes.js';
import { silentLogger } from '../../../src/log.js';
import { FakeCachedImageSource, testCatalog } from '../../helpers/webhook.js';

const SIDECAR = 'registry.example/kubevirt-spdk:v0.1.0';
const cfg = { sidecarImage: SIDECAR };
const catalog = testCatalog();

const VOLS = `- name: rootdisk
  spdkVhostBlkDisk: {image: fedora-40, capacity: 20Gi, bootOrder: 1}
`;

function vmi(annotations: Record<string, string> = { [VOLUMES_ANNOTATION]: VOLS }, spec: Record<string, unknown> = { domain: { devices: {} } }) {
  return { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', metadata: { name: 'vm1', namespace: 'default', annotations }, spec };
}

function request(object: unknown, kind = 'VirtualMachineInstance', operation: AdmissionRequest['operation'] = 'CREATE'): AdmissionRequest {
  return { uid: 'u-1', kind: { group: 'kubevirt.io', version: 'v1', kind }, operation, object: object as Record<string, unknown> };
}

function patchOf(res: AdmissionResponse): Operation[] {
  expect(res.patchType).toBe('JSONPatch');
  return JSON.parse(Buffer.from(res.patch ?? '', 'base64').toString('utf8')) as Operation[];
}

function applyTo<T>(obj: T, res: AdmissionResponse): T {
  return jsonpatch.applyPatch(structuredClone(obj), patchOf(res), true, false).newDocument;
}

describe('mutate: accepted objects', () => {
  it('adds the hook sidecar and one vhost slot (request and limit), creating missing parents', () => {
    const obj = vmi();
    const res = mutate(request(obj), catalog, cfg);
    expect(res).toMatchObject({ uid: 'u-1', allowed: true });
    const ops = patchOf(res);
    expect(ops.map((o) => o.path)).toContain('/metadata/annotations/hooks.kubevirt.io~1hookSidecars');
    const out = applyTo(obj, res) as ReturnType<typeof vmi> & { spec: { domain: { resources: Record<string, Record<string, string>> } } };
    expect(JSON.parse(out.metadata.annotations[HOOK_SIDECARS_ANNOTATION] ?? '')).toEqual([{ args: ['--version', 'v1alpha2'], image: SIDECAR }]);
    expect(out.spec.domain.resources.requests?.[VHOST_SLOT_RESOURCE]).toBe('1');
    expect(out.spec.domain.resources.limits?.[VHOST_SLOT_RESOURCE]).toBe('1');
  });

  it('is idempotent: a second pass over the patched object yields no patch', () => {
    const obj = vmi({ [VOLUMES_ANNOTATION]: VOLS }, { domain: { resources: { requests: { memory: '1Gi' } }, devices: {} } });
    const once = applyTo(obj, mutate(request(obj), catalog, cfg));
    const again = mutate(request(once), catalog, cfg);
    expect(again).toEqual({ uid: 'u-1', allowed: true });
    expect((once.spec.domain as { resources: { requests: Record<string, string> } }).resources.requests.memory).toBe('1Gi');
  });

  it("keeps the user's own sidecars and appends ours", () => {
    const theirs = [{ image: 'example/smbios-hook:1.0', args: ['--version', 'v1alpha2'] }];
    const obj = vmi({ [VOLUMES_ANNOTATION]: VOLS, [HOOK_SIDECARS_ANNOTATION]: JSON.stringify(theirs) });
    const out = applyTo(obj, mutate(request(obj), catalog, cfg));
    expect(JSON.parse(out.metadata.annotations[HOOK_SIDECARS_ANNOTATION] ?? '')).toEqual([...theirs, { args: ['--version', 'v1alpha2'], image: SIDECAR }]);
    expect(mutate(request(out), catalog, cfg).patch).toBeUndefined();
  });

  it('replaces an older version of our sidecar instead of adding a second one', () => {
    const obj = vmi({ [VOLUMES_ANNOTATION]: VOLS, [HOOK_SIDECARS_ANNOTATION]: JSON.stringify([{ image: 'registry.example/kubevirt-spdk:v0.0.9', imagePullPolicy: 'IfNotPresent' }]) });
    const out = applyTo(obj, mutate(request(obj), catalog, cfg));
    expect(JSON.parse(out.metadata.annotations[HOOK_SIDECARS_ANNOTATION] ?? '')).toEqual([
      { image: SIDECAR, imagePullPolicy: 'IfNotPresent', args: ['--version', 'v1alpha2'] },
    ]);
  });

  it('patches the template of a VirtualMachine', () => {
    const vm = { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', metadata: { name: 'vm1' }, spec: { running: false, template: { metadata: { annotations: { [VOLUMES_ANNOTATION]: VOLS } }, spec: { domain: { devices: {} } } } } };
    const res = mutate(request(vm, 'VirtualMachine'), catalog, cfg);
    expect(res.allowed).toBe(true);
    expect(patchOf(res).map((o) => o.path)).toEqual([
      '/spec/template/metadata/annotations/hooks.kubevirt.io~1hookSidecars',
      '/spec/template/metadata/labels',
      '/spec/template/spec/domain/resources',
      '/spec/template/spec/domain/resources/limits',
    ]);
    const out = applyTo(vm, res);
    expect(out.spec.running).toBe(false);
    expect(mutate(request(out, 'VirtualMachine', 'UPDATE'), catalog, cfg).patch).toBeUndefined();
  });

  it('accepts an image without a known size, and hugepages', () => {
    const vols = `- {name: d, spdkVhostBlkDisk: {image: unsized, capacity: 1Gi}}`;
    const res = mutate(request(vmi({ [VOLUMES_ANNOTATION]: vols }, { domain: { memory: { hugepages: { pageSize: '2Mi' } } } })), catalog, cfg);
    expect(res.allowed).toBe(true);
  });
});

describe('mutate: objects left alone', () => {
  it('passes an object without the annotation with no patch', () => {
    expect(mutate(request(vmi({})), catalog, cfg)).toEqual({ uid: 'u-1', allowed: true });
  });
  it('passes other kinds, deletes, and updates of a running VMI (its spec is immutable)', () => {
    expect(mutate(request(vmi(), 'Pod'), catalog, cfg)).toEqual({ uid: 'u-1', allowed: true });
    expect(mutate({ ...request(vmi()), operation: 'DELETE', object: null }, catalog, cfg)).toEqual({ uid: 'u-1', allowed: true });
    const upd = mutate({ ...request(vmi(), 'VirtualMachineInstance', 'UPDATE'), oldObject: vmi({ [VOLUMES_ANNOTATION]: '[]' }) }, catalog, cfg);
    expect(upd.allowed).toBe(true);
    expect(upd.patch).toBeUndefined();
    expect(upd.warnings?.[0]).toMatch(/take effect only in a new VMI/);
  });
});

describe('mutate: rejected objects name the field and the rule', () => {
  const cases: Array<[string, ReturnType<typeof vmi> | Record<string, unknown>, string]> = [
    [
      'capacity smaller than the image',
      vmi({ [VOLUMES_ANNOTATION]: `- {name: rootdisk, spdkVhostBlkDisk: {image: fedora-40, capacity: 1Gi}}` }),
      'volumes[0].spdkVhostBlkDisk.capacity: 1Gi is smaller than image fedora-40 (4Gi)',
    ],
    ['unknown image', vmi({ [VOLUMES_ANNOTATION]: `- {name: a, spdkVhostBlkDisk: {image: nope, capacity: 1Gi}}` }), 'volumes[0].spdkVhostBlkDisk.image: CachedImage "nope" does not exist'],
    ['unknown field', vmi({ [VOLUMES_ANNOTATION]: `- {name: a, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi, size: 3}}` }), 'volumes[0].spdkVhostBlkDisk: unknown field(s) "size"'],
    ['not YAML', vmi({ [VOLUMES_ANNOTATION]: `- {name: a` }), 'volumes: not valid YAML'],
    [
      'name clash with a VMI disk',
      vmi({ [VOLUMES_ANNOTATION]: `- {name: containerdisk, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}}` }, { domain: { devices: { disks: [{ name: 'containerdisk' }] } } }),
      'volumes[0].name: "containerdisk" clashes with a disk or volume of the VMI itself',
    ],
    [
      'boot order taken by a VMI disk',
      vmi({ [VOLUMES_ANNOTATION]: VOLS }, { domain: { devices: { disks: [{ name: 'cd', bootOrder: 1 }] } } }),
      'volumes[0].spdkVhostBlkDisk.bootOrder: 1 is already used by spec.domain.devices.disks[0] (cd)',
    ],
    ['SEV', vmi({ [VOLUMES_ANNOTATION]: VOLS }, { domain: { launchSecurity: { sev: {} } } }), 'spec.domain.launchSecurity: is not supported'],
    [
      'two vhost slots',
      vmi({ [VOLUMES_ANNOTATION]: VOLS }, { domain: { resources: { limits: { [VHOST_SLOT_RESOURCE]: '2' } } } }),
      'spec.domain.resources.limits["kubevirt-spdk.io/vhost-slot"]: must be "1" (one vhost slot per VMI), found "2"',
    ],
    ['a host path as bdev (F1)', vmi({ [VOLUMES_ANNOTATION]: `- {name: a, spdkVhostBlkDisk: {bdev: /etc/shadow}}` }), 'volumes[0].spdkVhostBlkDisk.bdev: must be a bdev name'],
    ['a traversing bdev (F1)', vmi({ [VOLUMES_ANNOTATION]: `- {name: a, spdkVhostBlkDisk: {bdev: "lvs/../../x"}}` }), 'never a path'],
    ['an 8Ei capacity (F12)', vmi({ [VOLUMES_ANNOTATION]: `- {name: a, spdkVhostBlkDisk: {blank: {}, capacity: 8Ei}}` }), 'volumes[0].spdkVhostBlkDisk.capacity: 8Ei is larger than the limit of 64Ti'],
    ['huge annotation', vmi({ [VOLUMES_ANNOTATION]: `# ${'x'.repeat(40_000)}\n${VOLS}` }), 'metadata.annotations["kubevirt-spdk.io/volumes"]: must be at most 32768 characters'],
    ['broken hookSidecars', vmi({ [VOLUMES_ANNOTATION]: VOLS, [HOOK_SIDECARS_ANNOTATION]: '{"image":' }), 'metadata.annotations["hooks.kubevirt.io/hookSidecars"]: must be a JSON list of hook sidecars'],
  ];
  it.each(cases)('%s', (_name, obj, message) => {
    const res = mutate(request(obj), catalog, cfg);
    expect(res.allowed).toBe(false);
    expect(res.patch).toBeUndefined();
    expect(res.status?.code).toBe(422);
    expect(res.status?.message).toContain(message);
  });

  it('prefixes fields of a VirtualMachine with spec.template', () => {
    const vm = { kind: 'VirtualMachine', metadata: { name: 'x' }, spec: { template: { metadata: { annotations: { [VOLUMES_ANNOTATION]: VOLS } }, spec: { domain: { launchSecurity: {} } } } } };
    expect(mutate(request(vm, 'VirtualMachine'), catalog, cfg).status?.message).toContain('spec.template.spec.domain.launchSecurity');
  });

  it('answers 503 while the catalog has not synced', () => {
    const res = mutate(request(vmi()), new InformerImageCatalog(new FakeCachedImageSource(), silentLogger), cfg);
    expect(res).toMatchObject({ allowed: false, status: { code: 503 } });
  });
});

describe('mutate: repeated annotations', () => {
  it('gives each VMI its own answer even when the annotation text repeats', () => {
    const vols = `- {name: rootdisk, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}}`;
    const clashing = vmi({ [VOLUMES_ANNOTATION]: vols }, { domain: { devices: { disks: [{ name: 'rootdisk' }] } } });
    const fine = vmi({ [VOLUMES_ANNOTATION]: vols });
    for (let i = 0; i < 2; i++) {
      expect(mutate(request(clashing), catalog, cfg).allowed).toBe(false);
      expect(mutate(request(fine), catalog, cfg).allowed).toBe(true);
    }
  });
});

describe('helpers', () => {
  it('escapes JSON pointer tokens', () => {
    expect(escapePointerToken('a/b~c')).toBe('a~1b~0c');
  });
  it('setAt creates the missing parents in one add, and no-ops when the value is there', () => {
    expect(setAt({ a: {} }, ['a', 'b', 'c'], 1)).toEqual({ op: 'add', path: '/a/b', value: { c: 1 } });
    expect(setAt({ a: { b: { c: 1 } } }, ['a', 'b', 'c'], 1)).toBeUndefined();
    expect(() => setAt({ a: 'x' }, ['a', 'b'], 1)).toThrow(/a: must be an object/);
  });
  it('finds the repository of an image reference', () => {
    expect(imageRepository('reg:5000/org/img:tag@sha256:abc')).toBe('reg:5000/org/img');
    expect(imageRepository('reg:5000/org/img')).toBe('reg:5000/org/img');
  });
});
