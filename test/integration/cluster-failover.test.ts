import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { imageKey } from '../../src/contract/index.js';
import { CIMGS, eventually } from '../helpers/cluster-rig.js';
import { useQsdCluster } from '../helpers/qsd-cluster-nodes.js';
import { MiB, mibSums, qsdCanRun, sha } from '../helpers/qsd-nodes.js';
import { frontEndAsync, type Request } from '../helpers/vhost-front-end.js';

/**
 * Source failover in cluster mode: three "nodes" (each its own qemu-storage-daemon, agent,
 * kubelet PodResources) on one fake API server. A and C hold the image; B's disk is Ready at
 * once and hydrates from one of them (the chooser's pick) while its guest writes; that node
 * dies (agent gone, daemon SIGKILLed, its NodeImageCache left behind as a dead node's is). B's
 * agent moves the hydration to the other node after the bound, its NodeImageCache names the
 * new source (which counts B as a reader), the image becomes ready and verified, and the
 * guest's disk reads back the image with its writes.
 */

const SIZE = 16 * MiB;
const image = randomBytes(SIZE);
const SHA = sha(image);
const KEY = imageKey({ name: 'base', source: { http: { url: 'http://x.invalid/', sha256: SHA } }, format: 'raw' });

const cl = useQsdCluster('clfail-', { sourceFailoverAfterMs: 2_000 });
const { cacheOf, diskStatus } = cl;

async function io(socketPath: string, requests: Request[]): Promise<Array<{ status: number; sha256?: string }>> {
  return (await frontEndAsync(socketPath, requests)).results;
}

beforeAll(async () => {
  await writeFile(path.join(cl.dir, 'origin.raw'), image);
  // A host-path origin cannot be read lazily: B's only way on is another peer.
  cl.api.put(CIMGS, { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name: 'base' }, spec: { source: { hostPath: { path: path.join(cl.dir, 'origin.raw'), sha256: SHA } }, size: SIZE } });
});

describe.skipIf(!qsdCanRun())('source failover between nodes (qsd, cluster mode)', { timeout: 240_000 }, () => {
  it('B\'s hydration moves from the peer that died to the other one, finishes, and the guest\'s disk keeps its writes', async () => {
    const a = await cl.start('node-a');
    cl.schedule(a, 'vm-a', 'uid-a');
    await eventually('vm-a Ready', () => diskStatus('vm-a')?.phase === 'Ready', 60_000);
    const c = await cl.start('node-c');
    cl.schedule(c, 'vm-c', 'uid-c');
    await eventually('C holds the image, ready and exported', () => (cacheOf('node-c')?.phase === 'ready' && cacheOf('node-c')?.export ? true : undefined), 90_000);
    await eventually('A exports the image', () => cacheOf('node-a')?.export);

    const b = await cl.start('node-b', { backend: { hydrationBytesPerSecond: MiB } });
    cl.schedule(b, 'vm-b', 'uid-b');
    await eventually('vm-b Ready', () => diskStatus('vm-b')?.phase === 'Ready', 60_000);
    const first = await eventually('B names its source', () => {
      const s = cacheOf('node-b');
      return s?.phase === 'hydrating' && (s.source === 'node-a' || s.source === 'node-c') ? s.source : undefined;
    });
    const [dead, other] = first === 'node-a' ? [a, c] : [c, a];
    expect(cacheOf('node-b')?.key).toBe(KEY);
    const socket = cl.diskSocket('node-b');
    expect((await io(socket, [{ op: 'write', sector: 0, len: MiB, fill: 0x5a }])).map((r) => r.status)).toEqual([0]);
    await eventually('some hydration from the first peer', () => ((cacheOf('node-b')?.hydratedPercent ?? 0) >= 10 ? true : undefined));

    await cl.kill(dead);
    // The dead node's NodeImageCache still says it holds the image: only the failover skips it.
    expect(cacheOf(dead.name)?.export).toBeDefined();
    await eventually('B names the other node as its source', () => (cacheOf('node-b')?.source === other.name ? true : undefined), 90_000);
    expect(cacheOf('node-b')?.phase).toBe('hydrating');
    await eventually('the other node counts B as a reader', () => ((cacheOf(other.name)?.peerReaders ?? 0) >= 1 ? true : undefined));
    expect((await io(socket, [{ op: 'write', sector: (2 * MiB) / 512, len: MiB, fill: 0x66 }])).map((r) => r.status)).toEqual([0]);

    // Ready means the sha256 of the hydrated golden matched.
    await eventually('B hydrated', () => (cacheOf('node-b')?.phase === 'ready' ? true : undefined), 90_000);
    expect(cacheOf('node-b')?.source).toBeUndefined();
    const want = mibSums(image);
    want[0] = sha(Buffer.alloc(MiB, 0x5a));
    want[2] = sha(Buffer.alloc(MiB, 0x66));
    const all = await io(socket, Array.from({ length: SIZE / MiB }, (_, i) => ({ op: 'read' as const, sector: (i * MiB) / 512, len: MiB })));
    expect(all.every((r) => r.status === 0)).toBe(true);
    expect(all.map((r) => r.sha256)).toEqual(want);
    expect(diskStatus('vm-b')?.phase).toBe('Ready');
  });
});
