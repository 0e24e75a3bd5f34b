import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ORIGIN, rendezvous } from '../../src/agent/image-sources.js';
import { imageKey } from '../../src/contract/index.js';
import { CIMGS, eventually } from '../helpers/cluster-rig.js';
import { NICS, useQsdCluster } from '../helpers/qsd-cluster-nodes.js';
import { MiB, mibSums, qsdCanRun, sha } from '../helpers/qsd-nodes.js';
import { startOrigin, type Origin } from '../helpers/origin.js';
import { frontEndAsync } from '../helpers/vhost-front-end.js';

/**
 * The seed rule in cluster mode: three "nodes" (each its own qemu-storage-daemon, agent and
 * kubelet PodResources, on one fake API server) start the same image at the same moment, and no
 * node holds it. Each announces it (NodeImageCache phase `wanted`); one seed reads the HTTP
 * origin lazily, the others hydrate from the seed's export. The origin counts the bytes it
 * sends: one image, not three. Then the seed dies right after announcing (its last
 * NodeImageCache, saying `wanted`, stays behind): the others give up on it and still finish.
 */

const canRun = qsdCanRun() && spawnSync('sh', ['-c', 'ls /usr/lib/*/qemu/block-curl.so /usr/lib/qemu/block-curl.so 2>/dev/null | grep -q .']).status === 0;

const SIZE = 16 * MiB;
// Long enough that a loaded machine never makes a follower give up on a live seed.
const SEED_WAIT_MS = 8_000;

const cl = useQsdCluster('clseed-', { backend: { lazyImages: true }, seed: { waitMs: SEED_WAIT_MS, settleMs: 500 } });
const { cacheOf } = cl;
const diskPhase = (vmi: string): string | undefined => cl.diskStatus(vmi)?.phase;
const origins: Origin[] = [];

/** A CachedImage over a fresh HTTP origin (throttled, counting its bytes). */
async function image(name: string): Promise<{ data: Buffer; key: string; origin: Origin }> {
  const data = randomBytes(SIZE);
  const origin = await startOrigin(data, { bytesPerSecond: 4 * MiB, name: `${name}.raw` });
  origins.push(origin);
  const source = { http: { url: origin.url, sha256: sha(data) } };
  cl.api.put(CIMGS, { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name }, spec: { source, size: SIZE } });
  return { data, key: imageKey({ name, source, format: 'raw' }), origin };
}

async function readsBack(node: string, data: Buffer): Promise<void> {
  const res = await frontEndAsync(cl.diskSocket(node), Array.from({ length: SIZE / MiB }, (_, i) => ({ op: 'read' as const, sector: (i * MiB) / 512, len: MiB })));
  expect(res.results.map((r) => r.sha256)).toEqual(mibSums(data));
}

/** Every `source` each node's NodeImageCache named for the image while the test polled. */
function watchSources(names: readonly string[], cachedImage: string): { seen: Map<string, Set<string>>; stop: () => void } {
  const seen = new Map(names.map((n) => [n, new Set<string>()]));
  const t = setInterval(() => {
    for (const n of names) {
      const s = cacheOf(n, cachedImage)?.source;
      if (s) seen.get(n)?.add(s);
    }
  }, 20);
  return { seen, stop: () => clearInterval(t) };
}

afterEach(async () => {
  await cl.stopAll().catch(() => undefined);
});

afterAll(async () => {
  for (const o of origins) await o.stop();
});

describe.skipIf(!canRun)('the seed rule: nodes that start one image at once (qsd, cluster mode)', { timeout: 180_000 }, () => {
  it('three nodes, nobody holds the image: the origin serves it once, every disk Ready, every golden whole and verified', async () => {
    const { data, key, origin } = await image('seeded');
    const names = ['seed-n1', 'seed-n2', 'seed-n3'];
    const ns = await Promise.all(names.map((n) => cl.start(n)));
    const seed = rendezvous(key, names);
    const watch = watchSources(names, 'seeded');
    // At the same moment, on every node.
    ns.forEach((n, i) => cl.schedule(n, `vm-s${i}`, `uid-vm-s${i}`, { image: 'seeded' }));
    await eventually('every node announced or holds it', () => names.every((n) => cacheOf(n, 'seeded') !== undefined), 30_000);
    await eventually('every disk Ready', () => ns.every((_, i) => diskPhase(`vm-s${i}`) === 'Ready'), 60_000);
    // Phase ready: hydrated and its sha256 verified against the CachedImage's.
    await eventually('every golden whole', () => names.every((n) => cacheOf(n, 'seeded')?.phase === 'ready'), 120_000);
    watch.stop();
    // One node read the origin (the seed, the one every node computed); the others read it.
    expect(watch.seen.get(seed ?? '')).toEqual(new Set([ORIGIN]));
    for (const n of names.filter((x) => x !== seed)) expect(watch.seen.get(n)).toEqual(new Set([seed]));
    // Once (and a 64 KiB probe of the image's header per node), not three times.
    expect(origin.served()).toBeGreaterThanOrEqual(SIZE);
    expect(origin.served()).toBeLessThan(1.5 * SIZE);
    for (const n of names) await readsBack(n, data);
  });

  it('the seed dies right after announcing (its NodeImageCache still says wanted): the others give up on it and still finish', async () => {
    const { data, key, origin } = await image('orphaned');
    const names = ['dead-n1', 'dead-n2', 'dead-n3'];
    const seed = rendezvous(key, names) ?? '';
    const ns = await Promise.all(names.map((n) => cl.start(n)));
    const seedNode = ns.find((n) => n.name === seed);
    if (!seedNode) throw new Error('no seed node');
    ns.forEach((n, i) => cl.schedule(n, `vm-d${i}`, `uid-vm-d${i}`, { image: 'orphaned' }));
    const last = await eventually('the seed announced', () => (cacheOf(seed, 'orphaned')?.phase === 'wanted' ? cl.api.get(NICS, seed) : undefined), 30_000);
    // The node goes away; the last thing it wrote stays, as after a crash or a lost node.
    await cl.stop(seedNode);
    cl.api.put(NICS, structuredClone(last));
    const rest = names.filter((n) => n !== seed);
    await eventually('the other disks Ready', () => ns.every((n, i) => n.name === seed || diskPhase(`vm-d${i}`) === 'Ready'), 60_000);
    await eventually('the other goldens whole', () => rest.every((n) => cacheOf(n, 'orphaned')?.phase === 'ready'), 120_000);
    expect(cacheOf(seed, 'orphaned')?.phase).toBe('wanted');
    for (const n of rest) await readsBack(n, data);
    // The next seed read the origin, the last node read it: still about one image, not two.
    expect(origin.served()).toBeLessThan(2 * SIZE);
  });
});
