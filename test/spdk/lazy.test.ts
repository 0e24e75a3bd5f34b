/**
 * Lazy images and lazy disks between two real spdk_tgt processes over NVMe-oF/TCP on loopback:
 * node A serves its golden (exportImage, to node B's host NQN only), node B makes a lazy golden
 * of it, clones a disk that reads A's bytes at once, hydrates in the background, survives its
 * own spdk_tgt restart mid-hydration, and keeps every byte after A stops serving. Then the
 * same for one disk (cloneRemoteDisk + hydrateDisk). Data is read back with spdk_dd.
 *
 * A's lvstore sits on a delay bdev: while its read latency is high, hydration (which copies
 * cluster by cluster) cannot finish, so the test can look at a disk before hydration ends
 * without racing it; the latency is dropped to let hydration complete.
 * Opt-in: SPDK_TGT (and SPDK_TGT_OLD for a second version).
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { RemoteDiskRef } from '../../src/backend/types.js';
import { until } from '../helpers/process.js';
import { cases, freePort, imageFile, imageOf, nvmeControllers, peerNode, readDisk, realSpdkOrSkip, setReadLatency, type BackendNode } from './target.js';

const targets = realSpdkOrSkip('test/spdk/lazy.test.ts');
const MiB = 2 ** 20;
const IMAGE_BYTES = 256 * MiB;
/**
 * Read latency of A's base while B must not finish hydrating: a cluster copy waits this long,
 * so 64 clusters take over 12 s. Raised only once B's attach is done: real v25.09 crashed
 * (malloc corruption) when the attach's examine reads waited a second each.
 */
const SLOW_US = 200_000;

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

const node = (bin: string, name: string, slow: boolean): Promise<BackendNode> => peerNode(bin, name, slow, cleanups);

describe.skipIf(targets.length === 0).each(cases(targets))('lazy images between two real spdk_tgt ($label)', ({ bin }) => {
  it('B boots a disk from A\'s golden at once, hydrates it across its own spdk_tgt restart, and keeps every byte after A stops serving', async () => {
    const a = await node(bin, 'node-a', true);
    const { spec, data } = await imageFile(a.dir, IMAGE_BYTES);
    await a.backend.ensureImage(spec);
    const ref: RemoteDiskRef = await a.backend.exportImage('img', { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: await freePort() }, allowedNodes: ['node-b'] });
    expect(ref).toMatchObject({ transport: 'nvmf-tcp', sizeBytes: IMAGE_BYTES });

    const b = await node(bin, 'node-b', false);
    const img = await b.backend.ensureImage({ ...spec, peer: ref });
    expect(img).toMatchObject({ phase: 'hydrating', sizeBytes: IMAGE_BYTES });
    await setReadLatency(a, SLOW_US);
    await b.backend.ensureDisk({ id: 'd-lazy', source: { kind: 'image', image: 'img' }, capacityBytes: IMAGE_BYTES });
    // The disk reads A's bytes while B's copy is still being made.
    expect((await readDisk(bin, b, 'd-lazy', 16 * 1024)).equals(data.subarray(0, 16 * 1024))).toBe(true);
    expect(await imageOf(b, 'img')).toMatchObject({ phase: 'hydrating' });
    // A counts B as the one node reading its export.
    expect(await imageOf(a, 'img')).toMatchObject({ phase: 'ready', peerReaders: 1 });

    // spdk_tgt on B dies mid-hydration and comes back: the lazy lvols load degraded until the
    // backend attaches A again from its record, then hydration resumes.
    await b.tgt.restart();
    await until('B back with its lazy golden', async () => (await imageOf(b, 'img').catch(() => undefined))?.phase === 'hydrating', 60_000);
    await setReadLatency(a, 0);
    await until('B hydrated', async () => (await imageOf(b, 'img').catch(() => undefined))?.phase === 'ready', 170_000);
    await until('B let go of A', async () => (await nvmeControllers(b)).length === 0, 30_000);
    await until('A counts no reader', async () => (await imageOf(a, 'img'))?.peerReaders === 0, 30_000);

    // A stops serving (and could delete its copy): B has everything.
    await a.backend.unexportImage('img');
    await a.tgt.kill('SIGKILL');
    const all = await readDisk(bin, b, 'd-lazy', IMAGE_BYTES);
    expect(all.equals(data)).toBe(true);
    expect(await imageOf(b, 'img')).toMatchObject({ phase: 'ready', cloneCount: 1 });
  });

  it('a disk that lives on A becomes B\'s own (cloneRemoteDisk, hydrateDisk), and A\'s copy can go', async () => {
    const a = await node(bin, 'node-a', true);
    const { spec, data } = await imageFile(a.dir, IMAGE_BYTES);
    await a.backend.ensureImage(spec);
    await a.backend.ensureDisk({ id: 'd-mig', source: { kind: 'image', image: 'img' } });
    const ref = await a.backend.exportDisk('d-mig', { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: await freePort() } });
    const b = await node(bin, 'node-b', false);
    const disk = await b.backend.cloneRemoteDisk(ref, 'd-mig');
    expect(disk).toMatchObject({ id: 'd-mig', owned: true, sizeBytes: ref.sizeBytes });
    await setReadLatency(a, SLOW_US);
    expect((await b.backend.hydrateDisk('d-mig')).state).toBe('hydrating');
    expect((await readDisk(bin, b, 'd-mig', 16 * 1024)).equals(data.subarray(0, 16 * 1024))).toBe(true);
    expect((await b.backend.hydrateDisk('d-mig')).state).not.toBe('standalone');
    await setReadLatency(a, 0);
    await until('disk hydrated', async () => (await b.backend.hydrateDisk('d-mig')).state === 'standalone', 170_000);
    expect(await nvmeControllers(b)).toEqual([]);
    await a.backend.unexportDisk('d-mig');
    await a.backend.deleteDisk('d-mig');
    await a.tgt.kill('SIGKILL');
    expect((await readDisk(bin, b, 'd-mig', IMAGE_BYTES)).equals(data)).toBe(true);
    await b.backend.deleteDisk('d-mig');
    expect((await b.backend.observe()).disks).toEqual([]);
  });
});
