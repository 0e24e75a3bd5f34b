import { describe, expect, it } from 'vitest';
import jsonpatch, { type Operation } from 'fast-json-patch';
import { CACHE_AFFINITY_ANNOTATION, cacheAffinityTerms, mergeCacheAffinity, type PreferredTerm } from '../../../webhooks/affinity.js';
import { mutate } from '../../../webhooks/mutate.js';
import { InformerImageCatalog } from '../../../webhooks/catalog.js';
import type { AdmissionRequest, AdmissionResponse } from '../../../webhooks/admission-review.js';
import { VOLUMES_ANNOTATION } from '../../../src/api/volumes.js';
import { silentLogger } from '../../../src/log.js';
import { FakeCachedImageSource } from '../../helpers/webhook.js';

/**
 * Cache-aware placement: a new VMI prefers (never requires) the nodes that hold its images,
 * keeps the user's own affinity, and a second admission replaces our terms, never adds more.
 */

const cfg = { sidecarImage: 'registry.example/kubevirt-spdk:v0.1.0' };
const PREF = ['spec', 'affinity', 'nodeAffinity', 'preferredDuringSchedulingIgnoredDuringExecution'];

function catalogWith(images: Record<string, string[] | undefined>): InformerImageCatalog {
  const src = new FakeCachedImageSource();
  for (const [name, nodes] of Object.entries(images)) {
    src.put({
      apiVersion: 'kubevirt-spdk.io/v1alpha1',
      kind: 'CachedImage',
      metadata: { name },
      spec: { source: { hostPath: { path: `/images/${name}.raw` } }, size: '1Gi' },
      ...(nodes ? { status: { readyNodes: nodes.length, readyNodeNames: nodes } } : {}),
    } as { metadata: { name: string } });
  }
  src.sync();
  return new InformerImageCatalog(src, silentLogger);
}

const VOLS = `- {name: root, spdkVhostBlkDisk: {image: fedora, capacity: 10Gi}}
- {name: data, spdkVhostBlkDisk: {image: debian, capacity: 10Gi}}
- {name: again, spdkVhostBlkDisk: {image: fedora, capacity: 10Gi}}
`;

type Vmi = { metadata: { name: string; annotations: Record<string, string> }; spec: Record<string, unknown> };
const vmi = (spec: Record<string, unknown> = { domain: { devices: {} } }, annotations: Record<string, string> = {}): Vmi => ({
  metadata: { name: 'vm1', annotations: { [VOLUMES_ANNOTATION]: VOLS, ...annotations } },
  spec,
});
const request = (object: unknown, kind = 'VirtualMachineInstance', operation: AdmissionRequest['operation'] = 'CREATE'): AdmissionRequest => ({
  uid: 'u',
  kind: { group: 'kubevirt.io', version: 'v1', kind },
  operation,
  object: object as Record<string, unknown>,
});
const ops = (r: AdmissionResponse): Operation[] => (r.patch ? (JSON.parse(Buffer.from(r.patch, 'base64').toString('utf8')) as Operation[]) : []);
const applied = <T>(o: T, r: AdmissionResponse): T => jsonpatch.applyPatch(structuredClone(o), ops(r), true, false).newDocument;
const preferred = (o: unknown): unknown[] => PREF.reduce<unknown>((c, k) => (c as Record<string, unknown> | undefined)?.[k], o) as unknown[];
const term = (weight: number, node: string): PreferredTerm => ({ weight, preference: { matchFields: [{ key: 'metadata.name', operator: 'In', values: [node] }] } });

describe('cacheAffinityTerms', () => {
  it('one term per node (matchFields takes exactly one value), weighted by the share of the VMI images it holds', () => {
    expect(
      cacheAffinityTerms(
        [
          { image: 'a', nodes: ['n2', 'n1', 'n2'] },
          { image: 'b', nodes: [] },
          { image: 'a', nodes: ['n9'] },
          { image: 'c', nodes: ['n2'] },
        ],
        60,
      ),
    ).toEqual([term(40, 'n2'), term(20, 'n1')]);
    expect(cacheAffinityTerms([{ image: 'a', nodes: ['n1'] }], 0)).toEqual([]);
    expect(cacheAffinityTerms([{ image: 'a', nodes: [] }], 50)).toEqual([]);
    // Each term's weight stays within Kubernetes' 1..100.
    const many = Array.from({ length: 26 }, (_, i) => ({ image: `i${i}`, nodes: [`n${i}`] }));
    expect(cacheAffinityTerms(many, 10).every((t) => t.weight === 1)).toBe(true);
    expect(cacheAffinityTerms([{ image: 'a', nodes: ['n'] }], 500)[0]?.weight).toBe(100);
  });

  it('at most 32 terms however many nodes hold the images: those holding the most first', () => {
    const images = Array.from({ length: 26 }, (_, i) => ({ image: `i${i}`, nodes: [...Array.from({ length: 32 }, (_, j) => `n${i}-${j}`), 'everywhere'] }));
    const terms = cacheAffinityTerms(images, 50);
    expect(terms).toHaveLength(32);
    expect(terms[0]).toEqual(term(50, 'everywhere'));
    expect(terms.every((t) => t.preference.matchFields.length === 1 && t.preference.matchFields[0]?.values.length === 1)).toBe(true);
  });
});

describe('mergeCacheAffinity', () => {
  const ours = [term(50, 'n1')];
  it('appends to the user terms, replaces only the terms our annotation records, and removes nothing it cannot read', () => {
    const theirs = { weight: 100, preference: { matchExpressions: [{ key: 'zone', operator: 'In', values: ['z1'] }] } };
    expect(mergeCacheAffinity([theirs], undefined, ours, 'f')).toEqual({ preferred: [theirs, ...ours], annotation: JSON.stringify(ours) });
    // Stale term of ours (recorded) is replaced; the user's identical-looking term is kept when not recorded.
    const stale = term(50, 'old');
    expect(mergeCacheAffinity([theirs, stale, stale], JSON.stringify([stale]), ours, 'f').preferred).toEqual([theirs, stale, ...ours]);
    expect(mergeCacheAffinity([theirs, stale], 'not json', ours, 'f').preferred).toEqual([theirs, stale, ...ours]);
    // Nothing to add and nothing recorded: no change at all.
    expect(mergeCacheAffinity([theirs], undefined, [], 'f')).toEqual({});
    // Nothing to add any more: our old terms and the annotation go.
    expect(mergeCacheAffinity([theirs, stale], JSON.stringify([stale]), [], 'f')).toEqual({ preferred: [theirs], annotation: null });
  });
  it('a term equal to ours already present is not added again (key order does not matter)', () => {
    const reordered = { preference: { matchFields: [{ values: ['n1'], operator: 'In', key: 'metadata.name' }] }, weight: 50 };
    expect(mergeCacheAffinity([reordered], JSON.stringify(ours), ours, 'f')).toEqual({});
  });
  it('refuses to touch a preferred list that is not a list', () => {
    expect(mergeCacheAffinity({ evil: true }, undefined, ours, 'spec.x')).toEqual({ warning: 'spec.x: is not a list; cache-aware placement skipped' });
  });
});

describe('mutate: cache-aware placement', () => {
  const catalog = catalogWith({ fedora: ['node-b', 'node-a'], debian: ['node-c'] });

  it('a node that holds every image of the VMI weighs most', () => {
    const both = catalogWith({ fedora: ['node-a', 'node-b'], debian: ['node-b'] });
    expect(preferred(applied(vmi(), mutate(request(vmi()), both, cfg)))).toEqual([term(50, 'node-b'), term(25, 'node-a')]);
  });

  it('adds a preferred (never required) affinity toward the nodes that hold each image, and records it', () => {
    const res = mutate(request(vmi()), catalog, cfg);
    expect(res.allowed).toBe(true);
    const out = applied(vmi(), res);
    expect(preferred(out)).toEqual([term(25, 'node-a'), term(25, 'node-b'), term(25, 'node-c')]);
    expect((out.spec.affinity as { nodeAffinity: Record<string, unknown> }).nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution).toBeUndefined();
    expect(JSON.parse(out.metadata.annotations[CACHE_AFFINITY_ANNOTATION] ?? '')).toEqual(preferred(out));
    // Idempotent: a second admission of the result changes nothing.
    expect(mutate(request(out), catalog, cfg).patch).toBeUndefined();
  });

  it("keeps the user's required and preferred terms and the rest of their affinity", () => {
    const required = { nodeSelectorTerms: [{ matchExpressions: [{ key: 'kubernetes.io/arch', operator: 'In', values: ['amd64'] }] }] };
    const theirs = { weight: 100, preference: { matchExpressions: [{ key: 'zone', operator: 'In', values: ['z1'] }] } };
    const podAntiAffinity = { preferredDuringSchedulingIgnoredDuringExecution: [] };
    const spec = { domain: { devices: {} }, affinity: { podAntiAffinity, nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: required, preferredDuringSchedulingIgnoredDuringExecution: [theirs] } } };
    const out = applied(vmi(spec), mutate(request(vmi(spec)), catalog, { ...cfg, cacheAffinityWeight: 40 }));
    const aff = out.spec.affinity as { podAntiAffinity: unknown; nodeAffinity: Record<string, unknown> };
    expect(aff.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution).toEqual(required);
    expect(aff.podAntiAffinity).toEqual(podAntiAffinity);
    expect(preferred(out)).toEqual([theirs, term(20, 'node-a'), term(20, 'node-b'), term(20, 'node-c')]);
  });

  it('a copied VMI with stale terms of ours gets the current ones instead (no duplicates)', () => {
    const first = applied(vmi(), mutate(request(vmi()), catalogWith({ fedora: ['old-1'], debian: ['old-2'] }), cfg));
    const again = applied(first, mutate(request(first), catalog, cfg));
    expect(preferred(again)).toEqual([term(25, 'node-a'), term(25, 'node-b'), term(25, 'node-c')]);
    // Nobody holds the images any more: our terms and the annotation go, the user's stay.
    const none = applied(again, mutate(request(again), catalogWith({ fedora: [], debian: undefined }), cfg));
    expect(preferred(none)).toEqual([]);
    expect(none.metadata.annotations[CACHE_AFFINITY_ANNOTATION]).toBeUndefined();
  });

  it('adds nothing when no node holds the images, when the weight is 0, to VM templates, or on UPDATE', () => {
    const cold = catalogWith({ fedora: undefined, debian: undefined });
    expect(ops(mutate(request(vmi()), cold, cfg)).map((o) => o.path)).not.toContain('/spec/affinity');
    expect(ops(mutate(request(vmi()), catalog, { ...cfg, cacheAffinityWeight: 0 })).some((o) => o.path.startsWith('/spec/affinity'))).toBe(false);
    const vm = { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachine', metadata: { name: 'vm1' }, spec: { template: vmi() } };
    const vmOps = ops(mutate(request(vm, 'VirtualMachine'), catalog, cfg));
    expect(vmOps.length).toBeGreaterThan(0);
    expect(vmOps.some((o) => o.path.includes('affinity'))).toBe(false);
    expect(mutate({ ...request(vm, 'VirtualMachine', 'UPDATE'), oldObject: vm }, catalog, cfg).patch).toBeUndefined();
  });

  it('hostile affinity: a huge list of the user stays as it is plus ours; a non-list or non-object is left alone with a warning, the VMI still admitted', () => {
    const huge = Array.from({ length: 5000 }, (_, i) => ({ weight: 1, preference: { matchExpressions: [{ key: `k${i}`, operator: 'Exists' }] } }));
    const spec = { domain: { devices: {} }, affinity: { nodeAffinity: { preferredDuringSchedulingIgnoredDuringExecution: huge } } };
    const out = applied(vmi(spec), mutate(request(vmi(spec)), catalog, cfg));
    expect(preferred(out)).toHaveLength(5003);
    expect(preferred(out).slice(0, 5000)).toEqual(huge);

    for (const affinity of [{ nodeAffinity: { preferredDuringSchedulingIgnoredDuringExecution: 'all of them' } }, { nodeAffinity: 7 }, 'zone=a']) {
      const s = { domain: { devices: {} }, affinity };
      const res = mutate(request(vmi(s)), catalog, cfg);
      expect(res.allowed).toBe(true);
      expect(res.warnings?.join('\n')).toMatch(/spec\.affinity.*cache-aware placement skipped/);
      expect(ops(res).some((o) => o.path.startsWith('/spec/affinity'))).toBe(false);
    }
  });

  it('a malformed status of a CachedImage gives no affinity but keeps the image valid', () => {
    const src = new FakeCachedImageSource();
    src.put({ apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name: 'fedora' }, spec: { source: { hostPath: { path: '/f' } } }, status: { readyNodeNames: ['../../etc', 'UPPER'] } } as { metadata: { name: string } });
    src.put({ apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name: 'debian' }, spec: { source: { hostPath: { path: '/d' } } }, status: { readyNodeNames: Array.from({ length: 1000 }, (_, i) => `n${i}`) } } as { metadata: { name: string } });
    src.sync();
    const res = mutate(request(vmi()), new InformerImageCatalog(src, silentLogger), cfg);
    expect(res.allowed).toBe(true);
    expect(ops(res).some((o) => o.path.startsWith('/spec/affinity'))).toBe(false);
  });
});
