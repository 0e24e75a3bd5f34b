import { describe, expect, it } from 'vitest';
import { imagesToWarm, warmImports } from '../../../src/agent/warm.js';
import { emptyJournalState } from '../../../src/agent/journal.js';
import { reconcile, type Action, type ReconcileConfig } from '../../../src/agent/reconcile.js';
import type { ObservedImage } from '../../../src/backend/types.js';
import { desiredOf, GiB, harness, image, vmi } from './fixtures.js';

/** Prefetch on the node: which images it warms, how they are planned, and that they stay. */

const cached = (name: string, prefetch: unknown, prefetchNodes?: unknown) => ({
  apiVersion: 'kubevirt-spdk.io/v1alpha1',
  kind: 'CachedImage',
  metadata: { name },
  spec: { source: { hostPath: { path: `/images/${name}.raw` } }, ...(prefetch === undefined ? {} : { prefetch }) },
  ...(prefetchNodes === undefined ? {} : { status: { prefetchNodes } }),
});

describe('imagesToWarm', () => {
  it('the images whose status.prefetchNodes names this node and that still ask for a prefetch', () => {
    const images = [
      cached('fedora', { count: 2 }, ['node-a', 'node-b']),
      cached('debian', { nodeSelector: { matchLabels: { disk: 'nvme' } } }, ['node-a']),
      cached('alpine', { count: 1 }, ['node-b']),
      // The prefetch was removed; the controller has not cleared the status yet: not warmed any more.
      cached('stale', undefined, ['node-a']),
      // Invalid spec (count 0): never warmed, whatever the status says.
      cached('broken', { count: 0 }, ['node-a']),
      // Malformed status: nothing.
      cached('garbled', { count: 1 }, 'node-a'),
      null,
      { metadata: { name: 'x' } },
    ];
    expect(imagesToWarm('node-a', images)).toEqual(['debian', 'fedora']);
    expect(imagesToWarm('node-b', images)).toEqual(['alpine', 'fedora']);
    expect(imagesToWarm('node-c', images)).toEqual([]);
  });
});

describe('warmImports', () => {
  const observed = (entries: Array<[string, ObservedImage['phase']]>) => new Map(entries.map(([n, phase]) => [n, { phase }]));
  it('imports what is missing, failed or interrupted, in the catalog, and not imported for a disk already', () => {
    const catalog = [image('a'), image('b'), image('c'), image('d'), image('e')];
    const out = warmImports(['a', 'b', 'c', 'd', 'e', 'unknown'], catalog, observed([['b', 'ready'], ['c', 'failed'], ['d', 'importing'], ['e', 'hydrating']]), new Set(['a']));
    expect(out.map((i) => i.name)).toEqual(['c', 'd']);
  });
});

describe('reconcile with warm images', () => {
  const config: ReconcileConfig = { socket: { uid: 107, gid: 107, mode: 0o660 }, orphanGraceMs: 60_000, cache: { maxCount: 0 } };
  const memory = { journal: emptyJournalState(), now: 1_000, failed: new Map<string, string>(), sockets: new Map() };
  const img = (name: string): ObservedImage => ({ name, phase: 'ready', sizeBytes: GiB, ref: `lvs/img-${name}`, cloneCount: 0 });
  const of = <K extends Action['kind']>(plan: Action[], kind: K) => plan.filter((a): a is Extract<Action, { kind: K }> => a.kind === kind);

  it('plans an import for a warm image no disk needs, and none for one a disk imports already', () => {
    const d = { ...desiredOf([], [image('fedora'), image('debian')]), warm: ['fedora'] };
    expect(of(reconcile(d, { images: [], disks: [], controllers: [] }, memory, config), 'warmImage').map((a) => a.image.name)).toEqual(['fedora']);
    const withDisk = { ...desiredOf([vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }])], [image('fedora')]), warm: ['fedora'] };
    const plan = reconcile(withDisk, { images: [], disks: [], controllers: [] }, memory, config);
    expect(of(plan, 'ensureImage')).toHaveLength(1);
    expect(of(plan, 'warmImage')).toEqual([]);
  });

  it('never evicts a warm image, even over the cache limits; evicts it once it is no longer warm', () => {
    const observed = { images: [img('fedora')], disks: [], controllers: [] };
    const warm = reconcile({ ...desiredOf([], [image('fedora')]), warm: ['fedora'] }, observed, memory, config);
    expect(of(warm, 'evictImage')).toEqual([]);
    expect(of(warm, 'warmImage')).toEqual([]);
    expect(of(reconcile(desiredOf([], [image('fedora')]), observed, memory, config), 'evictImage').map((a) => a.name)).toEqual(['fedora']);
  });
});

describe('the agent warms an image before any VM asks for it', () => {
  it('imports it with no VMI on the node, and keeps it under a cache limit of zero images', async () => {
    const h = await harness({ cache: { maxCount: 0 } });
    try {
      h.agent.setDesired({ ...desiredOf([], [image('fedora')]), warm: ['fedora'] });
      await h.agent.converge('test');
      const images = (await h.backend.observe()).images;
      expect(images.map((i) => [i.name, i.phase])).toEqual([['fedora', 'ready']]);
      // No longer warm (prefetch removed): the cache limit applies again.
      h.agent.setDesired(desiredOf([], [image('fedora')]));
      await h.agent.reconcile('test');
      expect((await h.backend.observe()).images).toEqual([]);
    } finally {
      await h.agent.stop();
      await h.cleanup();
    }
  });
});
