import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imageKey, subtractRanges, type BootRange } from '../../src/contract/index.js';
import { CIMGS, eventually, PODS, VMIS } from '../helpers/cluster-rig.js';
import { NICS, useQsdCluster } from '../helpers/qsd-cluster-nodes.js';
import { MiB, qsdCanRun, sha } from '../helpers/qsd-nodes.js';
import { startOrigin, type Origin } from '../helpers/origin.js';
import { frontEndAsync } from '../helpers/vhost-front-end.js';

/**
 * Boot-order prefetch across nodes in cluster mode (each node its own qemu-storage-daemon,
 * agent and kubelet, one fake API server, a throttled loopback origin): node A boots the image
 * first and records the blocks its guest read; the profile travels in A's NodeImageCache into
 * node B's ImageSpec (a hostile profile another "node" publishes is refused, the good one used);
 * B hydrates it first and publishes it too, so it outlives A's golden.
 */

const haveCurl = spawnSync('sh', ['-c', 'ls /usr/lib/*/qemu/block-curl.so'], { stdio: 'ignore' }).status === 0;
const haveFuse = spawnSync('sh', ['-c', 'test -c /dev/fuse && test "$(id -u)" = 0'], { stdio: 'ignore' }).status === 0;

const K = 64 * 1024;
const SIZE = 32 * MiB;
const BOOT: BootRange[] = [
  { offset: 5 * MiB, length: K },
  { offset: 13 * MiB + 2 * K, length: 2 * K },
  { offset: 22 * MiB, length: 4 * K },
  { offset: 30 * MiB, length: K },
];

let origin: Origin;
const image = randomBytes(SIZE);
const SHA = sha(image);

const bootOrder = (record: boolean) => ({ record, capMs: 30_000, quietMs: 1_500, idleMs: 30_000, pollMs: 200 });
const cl = useQsdCluster('bootcl-', { backend: { lazyImages: true, bootOrder: bootOrder(false) }, bootProfiles: true });
const { cacheOf, diskStatus } = cl;

beforeAll(async () => {
  origin = await startOrigin(image, { bytesPerSecond: 4 * MiB });
  cl.api.put(CIMGS, { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name: 'base' }, spec: { source: { http: { url: origin.url, sha256: SHA } }, size: SIZE } });
});

afterAll(async () => {
  await origin?.stop();
});

describe.skipIf(!qsdCanRun() || !haveCurl || !haveFuse)('boot-order prefetch between nodes (qsd, cluster mode)', { timeout: 240_000 }, () => {
  it("A records its first boot; B gets the profile from A's NodeImageCache (a hostile one refused), hydrates it first, and keeps publishing it after A evicted its golden", async () => {
    const key = imageKey({ name: 'base', source: { http: { url: origin.url, sha256: SHA } }, format: 'raw' });
    // A "node" that publishes a hostile profile for the same key, named to be read first.
    cl.api.put(NICS, {
      apiVersion: 'kubevirt-spdk.io/v1alpha1',
      kind: 'NodeImageCache',
      metadata: { name: 'aaa-ghost' },
      status: { backend: 'qsd', summary: 'base', usedBytes: SIZE, updatedAt: new Date().toISOString(), images: [{ name: 'base', key, phase: 'failed', bootProfile: { sizeBytes: SIZE, ranges: [{ offset: 0, length: 64 * SIZE }] } }] },
    });

    const a = await cl.start('node-a', { backend: { bootOrder: bootOrder(true) }, maxCount: 0 });
    cl.schedule(a, 'vm-a', 'uid-a', { capacity: '32Mi' });
    await eventually('vm-a Ready', () => diskStatus('vm-a')?.phase === 'Ready', 60_000);
    const boot = await frontEndAsync(
      cl.diskSocket('node-a'),
      BOOT.map((r) => ({ op: 'read' as const, sector: r.offset / 512, len: r.length })),
    );
    expect(boot.results.every((r) => r.status === 0)).toBe(true);
    const recorded = await eventually('A publishes the profile it recorded', () => cacheOf('node-a')?.bootProfile as { sizeBytes: number; ranges: BootRange[] } | undefined, 60_000);
    expect(subtractRanges(BOOT, recorded.ranges)).toEqual([]);
    expect(subtractRanges(recorded.ranges, BOOT)).toEqual([]);

    const b = await cl.start('node-b');
    cl.schedule(b, 'vm-b', 'uid-b', { capacity: '32Mi' });
    await eventually('vm-b Ready', () => diskStatus('vm-b')?.phase === 'Ready', 60_000);
    const onB = await eventually('B publishes the profile it replayed', () => cacheOf('node-b')?.bootProfile, 60_000);
    expect(onB).toEqual(recorded);

    // A's VM goes; once B stands alone A evicts its golden (cache limit 0): B still publishes the profile.
    cl.api.remove(VMIS, 'vm-a', 'default');
    cl.api.remove(PODS, 'virt-launcher-vm-a', 'default');
    await eventually('B hydrated', () => cacheOf('node-b')?.phase === 'ready', 120_000);
    await eventually('A evicted its golden', () => cacheOf('node-a') === undefined, 60_000);
    expect(cacheOf('node-b')?.bootProfile).toEqual(recorded);
  });
});
