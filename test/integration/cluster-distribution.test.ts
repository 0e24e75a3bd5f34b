import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { chooseImageSource } from '../../src/agent/image-sources.js';
import type { RemoteDiskRef } from '../../src/backend/types.js';
import { imageKey } from '../../src/contract/index.js';
import { peerGoldensOf } from '../../src/kube/mapping.js';
import { CIMGS, eventually, PODS, VMIS } from '../helpers/cluster-rig.js';
import { NICS, useQsdCluster } from '../helpers/qsd-cluster-nodes.js';
import { MiB, mibSums, qsdCanRun, readAll, sha } from '../helpers/qsd-nodes.js';

/**
 * Node-to-node distribution in cluster mode: three "nodes" (each its own qemu-storage-daemon,
 * agent, kubelet PodResources) on one fake API server. Node A imports the image from the
 * origin; node B's disk is Ready at once from A's golden and hydrates from it while A keeps the
 * golden (even over its cache limit); once B stands alone A lets it go and B keeps serving.
 * Node C's first choice is a peer that does not answer: it falls back to the next (B).
 */

const SIZE = 16 * MiB;
const image = randomBytes(SIZE);
const SHA = sha(image);
const KEY = imageKey({ name: 'base', source: { http: { url: 'http://x.invalid/', sha256: SHA } }, format: 'raw' });
const want = mibSums(image);

const cl = useQsdCluster('cldist-');
const { cacheOf, diskStatus } = cl;
const updatedAt = (node: string): string | undefined => (cl.api.get(NICS, node)?.status as { updatedAt?: string } | undefined)?.updatedAt;

beforeAll(async () => {
  await writeFile(path.join(cl.dir, 'origin.raw'), image);
  // Two CachedImage names of one content: one golden per node.
  for (const name of ['base', 'base-copy']) {
    cl.api.put(CIMGS, { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name }, spec: { source: { hostPath: { path: path.join(cl.dir, 'origin.raw'), sha256: SHA } }, size: SIZE } });
  }
});

describe.skipIf(!qsdCanRun())('image distribution between nodes (qsd, cluster mode)', { timeout: 180_000 }, () => {
  it('B boots from A\'s golden at once and hydrates from it (across an agent restart); A keeps it meanwhile, then lets it go; B stands alone', async () => {
    const a = await cl.start('node-a', { maxCount: 0 });
    // What B's NodeImageCache said whenever A deleted a golden: never "hydrating from A".
    const atDelete: Array<string | undefined> = [];
    const del = a.backend.deleteImage.bind(a.backend);
    a.backend.deleteImage = (name: string) => {
      atDelete.push(cacheOf('node-b', 'base-copy')?.source);
      return del(name);
    };
    cl.schedule(a, 'vm-a', 'uid-a');
    await eventually('vm-a Ready', () => diskStatus('vm-a')?.phase === 'Ready', 60_000);
    const onA = await eventually('A exports its golden', () => cacheOf('node-a', 'base')?.export);
    expect(cacheOf('node-a', 'base')).toMatchObject({ key: KEY, phase: 'ready' });
    expect(cacheOf('node-a', 'base-copy')).toMatchObject({ key: KEY, phase: 'ready' });

    const b = await cl.start('node-b', { backend: { hydrationBytesPerSecond: MiB } });
    cl.schedule(b, 'vm-b', 'uid-b', { image: 'base-copy' });
    await eventually('vm-b Ready', () => diskStatus('vm-b')?.phase === 'Ready', 60_000);
    // Ready before its golden is whole: it hydrates from A, and says so.
    const hydrating = await eventually('B names A as its source', () => {
      const c = cacheOf('node-b', 'base-copy');
      return c?.phase === 'hydrating' && c.source === 'node-a' ? c : undefined;
    });
    expect(hydrating.key).toBe(KEY);
    await eventually('A counts B as a reader', () => cacheOf('node-a', 'base')?.peerReaders === 1);

    // A's VM goes: its golden is unused and over A's cache limit (0), but B still reads it.
    cl.api.remove(VMIS, 'vm-a', 'default');
    cl.api.remove(PODS, 'virt-launcher-vm-a', 'default');
    await eventually('A has no clone of it', () => cacheOf('node-a', 'base')?.clones === 0 || undefined);
    expect(cacheOf('node-b', 'base-copy')?.phase).toBe('hydrating');
    expect(cacheOf('node-a', 'base')).toBeDefined();

    // B's agent restarts mid-hydration: it resumes and still names A (which keeps its golden).
    await cl.stop(b);
    const before = updatedAt('node-b');
    const b2 = await cl.start('node-b', { backend: { hydrationBytesPerSecond: MiB } });
    b2.slots.push({ namespace: 'default', pod: 'virt-launcher-vm-b', container: 'compute', slot: 'slot-01' });
    await eventually('B republished after its restart', () => updatedAt('node-b') !== before || undefined);
    expect(cacheOf('node-b', 'base-copy')).toMatchObject({ phase: 'hydrating', source: 'node-a' });
    expect(cacheOf('node-a', 'base')).toBeDefined();

    await eventually('B hydrated', () => cacheOf('node-b', 'base-copy')?.phase === 'ready', 90_000);
    expect(cacheOf('node-b', 'base-copy')?.source).toBeUndefined();
    // Nobody reads A's golden now: it is evicted, and B serves every byte without A.
    await eventually('A evicted its golden', () => cacheOf('node-a', 'base') === undefined, 30_000);
    expect(atDelete.length).toBeGreaterThan(0);
    expect(atDelete.every((s) => s === undefined)).toBe(true);
    expect(await readAll(cl.diskSocket('node-b'), SIZE)).toEqual(want);
    expect(onA).toMatchObject({ transport: 'nbd' });
  });

  it('C falls back from a peer that does not answer to the next one', async () => {
    const goldens = () => peerGoldensOf(cl.api.list(NICS), { allowUnix: true });
    const dead: RemoteDiskRef = { transport: 'nbd', address: { kind: 'unix', path: path.join(cl.dir, 'nobody.sock') }, exportName: `img.${KEY}`, sizeBytes: SIZE };
    // A ghost node whose NodeImageCache says it holds the golden, named so that C tries it first.
    const ghost = Array.from({ length: 64 }, (_, i) => `ghost-${i}`).find((g) => {
      const choice = chooseImageSource({ self: 'node-c', key: KEY, transport: 'nbd', goldens: [...goldens(), { node: g, key: KEY, phase: 'ready', export: dead }] });
      return choice.kind === 'peer' && choice.node === g;
    });
    expect(ghost).toBeDefined();
    cl.api.put(NICS, { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'NodeImageCache', metadata: { name: ghost }, status: { backend: 'qsd', summary: 'base', usedBytes: SIZE, updatedAt: new Date().toISOString(), images: [{ name: 'base', key: KEY, phase: 'ready', export: dead }] } });

    const c = await cl.start('node-c', { backend: { hydrationBytesPerSecond: 4 * MiB } });
    cl.schedule(c, 'vm-c', 'uid-c');
    await eventually('vm-c Ready', () => diskStatus('vm-c')?.phase === 'Ready', 60_000);
    await eventually('C hydrates from B', () => cacheOf('node-c', 'base')?.source === 'node-b');
    await eventually('C hydrated', () => cacheOf('node-c', 'base')?.phase === 'ready', 90_000);
    expect(await readAll(cl.diskSocket('node-c'), SIZE)).toEqual(want);
  });
});
