import { describe, expect, it } from 'vitest';
import { chooseReadyNodeNames, choosePrefetchNodes, imageStatusUpdates, nodeCacheIndex, prefetchCandidates, type Candidate } from '../../../src/controller/image-status.js';

const node = (name: string, labels: Record<string, string> = {}, o: { ready?: boolean; unschedulable?: boolean } = {}) => ({
  metadata: { name, labels },
  spec: o.unschedulable ? { unschedulable: true } : {},
  status: { conditions: [{ type: 'Ready', status: o.ready === false ? 'False' : 'True' }] },
});
const nic = (name: string, images: Array<[string, string]> = []) => ({ metadata: { name }, status: { images: images.map(([n, phase]) => ({ name: n, phase })) } });
const image = (name: string, prefetch?: unknown, status?: unknown) => ({
  apiVersion: 'kubevirt-spdk.io/v1alpha1',
  kind: 'CachedImage',
  metadata: { name },
  spec: { source: { hostPath: { path: `/images/${name}.raw` } }, ...(prefetch ? { prefetch } : {}) },
  ...(status ? { status } : {}),
});
const cands = (...names: string[]): Candidate[] => names.map((name) => ({ name, labels: {} }));

describe('readyNodeNames: bounded and stable', () => {
  it('keeps the names given before while they stay ready, fills up by name, never more than the bound', () => {
    const ready = Array.from({ length: 100 }, (_, i) => `n${String(i).padStart(3, '0')}`);
    const first = chooseReadyNodeNames(ready, []);
    expect(first).toHaveLength(32);
    expect(first[0]).toBe('n000');
    // n000 stops holding it; the other 31 stay, one new one is taken.
    const second = chooseReadyNodeNames(ready.slice(1), first);
    expect(second.filter((n) => first.includes(n))).toHaveLength(31);
    expect(second).toHaveLength(32);
    // A previous name no longer ready is dropped even with room.
    expect(chooseReadyNodeNames(['a'], ['a', 'gone'])).toEqual(['a']);
  });
});

describe('prefetch candidates', () => {
  it('only Ready, schedulable nodes that run the agent (have a NodeImageCache); malformed Nodes are skipped', () => {
    const nodes = [node('a'), node('b', {}, { ready: false }), node('c', {}, { unschedulable: true }), node('d'), { metadata: {} }, null, 'x', { metadata: { name: 'e' } }];
    const { agentNodes } = nodeCacheIndex([nic('a'), nic('b'), nic('c'), nic('e'), { metadata: { name: 42 } }]);
    expect(prefetchCandidates(nodes, agentNodes).map((c) => c.name)).toEqual(['a']);
  });
});

describe('prefetch node choice', () => {
  it('takes nodes that already hold the image first, then spreads images over the least loaded nodes', () => {
    const c = cands('n1', 'n2', 'n3', 'n4');
    const out = choosePrefetchNodes(
      [
        { image: 'alpha', prefetch: { count: 2 }, previous: [] },
        { image: 'beta', prefetch: { count: 2 }, previous: [] },
      ],
      c,
      new Map([['alpha', ['n3']]]),
    );
    expect(out.get('alpha')).toContain('n3');
    // Four slots over four nodes: each node gets one image.
    expect([...(out.get('alpha') ?? []), ...(out.get('beta') ?? [])].sort()).toEqual(['n1', 'n2', 'n3', 'n4']);
  });

  it('keeps the previous choice while it is valid (a restart or a new leader changes nothing), replaces only what became invalid', () => {
    const c = cands('n1', 'n2', 'n3', 'n4', 'n5');
    const req = { image: 'img', prefetch: { count: 2 }, previous: ['n4', 'n5'] };
    expect(choosePrefetchNodes([req], c, new Map([['img', ['n1', 'n2']]])).get('img')).toEqual(['n4', 'n5']);
    // n5 left (not a candidate any more): n4 stays, a holder takes n5's place.
    expect(choosePrefetchNodes([req], cands('n1', 'n2', 'n3', 'n4'), new Map([['img', ['n2']]])).get('img')).toEqual(['n2', 'n4']);
    // The count went down: some of the previous ones are kept, no new one.
    expect(choosePrefetchNodes([{ ...req, prefetch: { count: 1 } }], c, new Map()).get('img')).toEqual(['n4']);
    // The same input twice gives the same answer.
    const fresh = { image: 'img', prefetch: { count: 3 }, previous: [] };
    expect(choosePrefetchNodes([fresh], c, new Map())).toEqual(choosePrefetchNodes([fresh], [...c].reverse(), new Map()));
  });

  it('the selector narrows the candidates; a count larger than what is eligible takes them all; a selector alone takes every node it selects', () => {
    const c: Candidate[] = [
      { name: 'a', labels: { zone: 'z1' } },
      { name: 'b', labels: { zone: 'z2' } },
      { name: 'c', labels: { zone: 'z1' } },
    ];
    const z1 = { matchLabels: { zone: 'z1' } };
    expect(choosePrefetchNodes([{ image: 'i', prefetch: { nodeSelector: z1, count: 5 }, previous: ['b'] }], c, new Map()).get('i')).toEqual(['a', 'c']);
    expect(choosePrefetchNodes([{ image: 'i', prefetch: { nodeSelector: z1 }, previous: [] }], c, new Map()).get('i')).toEqual(['a', 'c']);
    expect(choosePrefetchNodes([{ image: 'i', prefetch: { nodeSelector: { matchLabels: { zone: 'none' } } }, previous: [] }], c, new Map()).get('i')).toEqual([]);
  });

  it('a selector alone on a huge cluster stops at the limit', () => {
    const many = Array.from({ length: 1000 }, (_, i) => ({ name: `node-${i}`, labels: { role: 'worker' } }));
    const out = choosePrefetchNodes([{ image: 'i', prefetch: { nodeSelector: { matchLabels: { role: 'worker' } } }, previous: [] }], many, new Map());
    expect(out.get('i')).toHaveLength(256);
  });
});

describe('imageStatusUpdates: what the controller writes', () => {
  const nodes = [node('a', { zone: 'z1' }), node('b', { zone: 'z2' }), node('c', { zone: 'z1' })];
  const caches = [nic('a', [['fedora', 'ready']]), nic('b', [['fedora', 'ready'], ['debian', 'hydrating']]), nic('c')];

  it('readyNodes and readyNodeNames from the caches (ready only), prefetchNodes for images with a prefetch, null for the others', () => {
    const out = imageStatusUpdates([image('fedora'), image('debian', { count: 2 })], caches, nodes);
    expect(out).toEqual([
      { name: 'debian', status: { readyNodes: 0, readyNodeNames: [], prefetchNodes: expect.any(Array) as unknown } },
      { name: 'fedora', status: { readyNodes: 2, readyNodeNames: ['a', 'b'], prefetchNodes: null } },
    ]);
    expect(out[0]?.status.prefetchNodes).toHaveLength(2);
  });

  it('an image whose status already says so needs no write; a changed or malformed status is rewritten', () => {
    const upToDate = image('fedora', undefined, { readyNodes: 2, readyNodeNames: ['a', 'b'] });
    expect(imageStatusUpdates([upToDate], caches, nodes)).toEqual([]);
    const withPrefetch = image('debian', { nodeSelector: { matchLabels: { zone: 'z1' } } }, { readyNodes: 0, prefetchNodes: ['a', 'c'] });
    expect(imageStatusUpdates([withPrefetch], caches, nodes)).toEqual([]);
    // The prefetch was removed: the list goes (merge patch null).
    expect(imageStatusUpdates([image('debian', undefined, { readyNodes: 0, prefetchNodes: ['a', 'c'] })], caches, nodes)).toEqual([
      { name: 'debian', status: { readyNodes: 0, readyNodeNames: [], prefetchNodes: null } },
    ]);
    const garbage = image('fedora', undefined, { readyNodes: 2, readyNodeNames: 'a,b' });
    expect(imageStatusUpdates([garbage], caches, nodes)).toEqual([{ name: 'fedora', status: { readyNodes: 2, readyNodeNames: ['a', 'b'], prefetchNodes: null } }]);
  });

  it('counts each node once per ready image (not importing or hydrating; a cache without status holds nothing) and rewrites only a count that is off', () => {
    const more = [...caches, nic('d', [['fedora', 'ready'], ['fedora', 'ready'], ['debian', 'importing']]), { metadata: { name: 'e' } }];
    expect(nodeCacheIndex(more).holders).toEqual(new Map([['fedora', ['a', 'b', 'd']]]));
    const imgs = [image('fedora', undefined, { readyNodes: 3, readyNodeNames: ['a', 'b', 'd'] }), image('debian', undefined, { readyNodes: 1 }), image('new')];
    expect(imageStatusUpdates(imgs, more, nodes)).toEqual([
      { name: 'debian', status: { readyNodes: 0, readyNodeNames: [], prefetchNodes: null } },
      { name: 'new', status: { readyNodes: 0, readyNodeNames: [], prefetchNodes: null } },
    ]);
  });

  it('an invalid CachedImage still gets its counts but no prefetch; objects without a name are skipped', () => {
    const bad = { ...image('weird', { count: 0 }) };
    expect(imageStatusUpdates([bad, { metadata: {} }, null], caches, nodes)).toEqual([{ name: 'weird', status: { readyNodes: 0, readyNodeNames: [], prefetchNodes: null } }]);
  });
});
