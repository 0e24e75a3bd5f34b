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
    // No pinned version: the sidecar lists v1alpha1..3 and virt-launcher picks the newest it speaks.
    expect(JSON.parse(out.metadata.annotations[HOOK_SIDECARS_ANNOTATION] ?? '')).toEqual([{ args: ['sidecar'], image: SIDECAR }]);
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
    expect(JSON.parse(out.metadata.annotations[HOOK_SIDECARS_ANNOTATION] ?? '')).toEqual([...theirs, { args: ['sidecar'], image: SIDECAR }]);
    expect(mutate(request(out), catalog, cfg).patch).toBeUndefined();
  });

  it('replaces an older version of our sidecar instead of adding a second one', () => {
    const obj = vmi({ [VOLUMES_ANNOTATION]: VOLS, [HOOK_SIDECARS_ANNOTATION]: JSON.stringify([{ image: 'registry.example/kubevirt-spdk:v0.0.9', imagePullPolicy: 'IfNotPresent' }]) });
    const out = applyTo(obj, mutate(request(obj), catalog, cfg));
    expect(JSON.parse(out.metadata.annotations[HOOK_SIDECARS_ANNOTATION] ?? '')).toEqual([
      { image: SIDECAR, imagePullPolicy: 'IfNotPresent', args: ['sidecar'] },
    ]);
  });

  it('rewrites the args of our sidecar injected by an older release (pinned to v1alpha2, which has no Shutdown)', () => {
    const obj = vmi({ [VOLUMES_ANNOTATION]: VOLS, [HOOK_SIDECARS_ANNOTATION]: JSON.stringify([{ args: ['--version', 'v1alpha2'], image: SIDECAR }]) });
    const out = applyTo(obj, mutate(request(obj), catalog, cfg));
    expect(JSON.parse(out.metadata.annotations[HOOK_SIDECARS_ANNOTATION] ?? '')).toEqual([{ args: ['sidecar'], image: SIDECAR }]);
  });

  it('--hook-sidecar v1alpha3 pins the version; none injects no hook sidecar (the Plugin CR path) but still the slot', () => {
    const pinned = applyTo(vmi(), mutate(request(vmi()), catalog, { ...cfg, hookSidecar: 'v1alpha3' }));
    expect(JSON.parse(pinned.metadata.annotations[HOOK_SIDECARS_ANNOTATION] ?? '')).toEqual([{ args: ['sidecar', '--version', 'v1alpha3'], image: SIDECAR }]);
    const res = mutate(request(vmi()), catalog, { ...cfg, hookSidecar: 'none' });
    expect(res.allowed).toBe(true);
    expect(patchOf(res).map((o) => o.path)).not.toContain('/metadata/annotations/hooks.kubevirt.io~1hookSidecars');
    const plain = applyTo(vmi(), res) as ReturnType<typeof vmi> & { metadata: { labels: Record<string, string> }; spec: { domain: { resources: Record<string, Record<string, string>> } } };
    expect(plain.metadata.annotations[HOOK_SIDECARS_ANNOTATION]).toBeUndefined();
    // The label is what the Plugin path's admission policy selects launcher pods by.
    expect(plain.metadata.labels['kubevirt-spdk.io/disks']).toBe('true');
    expect(plain.spec.domain.resources.requests?.[VHOST_SLOT_RESOURCE]).toBe('1');
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
  it('passes other kinds and deletes', () => {
    expect(mutate(request(vmi(), 'Pod'), catalog, cfg)).toEqual({ uid: 'u-1', allowed: true });
    expect(mutate({ ...request(vmi()), operation: 'DELETE', object: null }, catalog, cfg)).toEqual({ uid: 'u-1', allowed: true });
  });
});

describe('mutate: UPDATE of a VMI (KubeVirt writes status and finalizers this way)', () => {
  const update = (object: unknown, oldObject: unknown, kind = 'VirtualMachineInstance'): AdmissionRequest => ({ ...request(object, kind, 'UPDATE'), oldObject: oldObject as Record<string, unknown> });
  const FIELD = `metadata.annotations["${VOLUMES_ANNOTATION}"]`;

  it("admits KubeVirt's own writes (status, finalizers) at once, without reading the annotation", () => {
    // Even text that would be refused on CREATE: it is the text that was admitted then, unchanged.
    const text = '['.repeat(5000);
    const old = vmi({ [VOLUMES_ANNOTATION]: text });
    const withStatus = { ...vmi({ [VOLUMES_ANNOTATION]: text }), status: { phase: 'Running' } };
    expect(mutate(update(withStatus, old), catalog, cfg)).toEqual({ uid: 'u-1', allowed: true });
    const noFinalizers = { ...vmi({ [VOLUMES_ANNOTATION]: VOLS }), metadata: { ...vmi().metadata, finalizers: [] } };
    expect(mutate(update(noFinalizers, vmi()), catalog, cfg)).toEqual({ uid: 'u-1', allowed: true });
  });

  it('refuses a change of the volume list on an existing VMI, whatever the new text (F9)', () => {
    for (const next of ['- {name: ../../etc, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}}', '- {name: x, spdkVhostBlkDisk: {bdev: /etc/shadow}}', VOLS.replace('20Gi', '30Gi')]) {
      const res = mutate(update(vmi({ [VOLUMES_ANNOTATION]: next }), vmi()), catalog, cfg);
      expect(res.allowed).toBe(false);
      expect(res.status?.message).toBe(`${FIELD}: cannot be changed on an existing VMI (its disks are already provisioned); create a new VMI, or change the VirtualMachine's template and restart it`);
    }
  });

  it('refuses adding the annotation to, or removing it from, an existing VMI', () => {
    expect(mutate(update(vmi(), vmi({})), catalog, cfg).allowed).toBe(false);
    expect(mutate(update(vmi({}), vmi()), catalog, cfg).allowed).toBe(false);
    expect(mutate(update(vmi({}), vmi({})), catalog, cfg)).toEqual({ uid: 'u-1', allowed: true });
  });

  it("validates a VirtualMachine template's new list fully, size cap included", () => {
    const vm = (text: string) => ({ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', metadata: { name: 'vm1', finalizers: ['kubevirt.io/virtualMachineControllerFinalize'] }, spec: { template: { metadata: { annotations: { [VOLUMES_ANNOTATION]: text } }, spec: { domain: { devices: {} } } } } });
    const bad = mutate(update(vm('- {name: ../../etc, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}}'), vm(VOLS), 'VirtualMachine'), catalog, cfg);
    expect(bad.allowed).toBe(false);
    expect(bad.status?.message).toMatch(/^volumes\[0\]\.name: must be a DNS-1123 label/);
    const big = mutate(update(vm(`# ${'x'.repeat(40_000)}`), vm(VOLS), 'VirtualMachine'), catalog, cfg);
    expect(big.status?.message).toMatch(/must be at most 32768 characters, found 40002$/);
    // Unchanged (the controller's own metadata writes): no work.
    expect(mutate(update(vm('[[['), vm('[[['), 'VirtualMachine'), catalog, cfg)).toEqual({ uid: 'u-1', allowed: true });
  });
});

describe('mutate: reconnectTimeout is a deprecated name', () => {
  it('is still read, with a warning that says what it really is', () => {
    const res = mutate(request(vmi({ [VOLUMES_ANNOTATION]: '- {name: d, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi, reconnectTimeout: 10s}}' })), catalog, cfg);
    expect(res.allowed).toBe(true);
    expect(res.warnings).toEqual([
      "volumes[0].spdkVhostBlkDisk.reconnectTimeout: deprecated, use reconnectInterval: it is the interval between QEMU's reconnect attempts (libvirt <reconnect timeout>), not a deadline; QEMU retries forever and the guest may wait up to this long after the backend is back (recommended: 1s)",
    ]);
    expect(mutate(request(vmi({ [VOLUMES_ANNOTATION]: '- {name: d, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi, reconnectInterval: 2s}}' })), catalog, cfg).warnings).toBeUndefined();
  });
  it('with reconnectInterval as well, is an error', () => {
    const res = mutate(request(vmi({ [VOLUMES_ANNOTATION]: '- {name: d, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi, reconnectInterval: 1s, reconnectTimeout: 10s}}' })), catalog, cfg);
    expect(res.status?.message).toBe('volumes[0].spdkVhostBlkDisk.reconnectTimeout: is the deprecated name of reconnectInterval: give only reconnectInterval');
  });
  it("refuses a volume that KubeVirt would alias like the VMI's own spdk-<name> disk", () => {
    const res = mutate(request(vmi({ [VOLUMES_ANNOTATION]: '- {name: scratch, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}}' }, { domain: { devices: { disks: [{ name: 'spdk-scratch' }] } }, volumes: [{ name: 'spdk-scratch' }] })), catalog, cfg);
    expect(res.status?.message).toBe('volumes[0].name: "scratch" clashes with the VMI\'s own disk or volume "spdk-scratch" (both would get the libvirt alias "ua-spdk-scratch")');
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
