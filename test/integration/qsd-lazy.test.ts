import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendError, type ImageSpec } from '../../src/backend/types.js';
import { startOrigin, type Origin } from '../helpers/origin.js';
import { rejectionOf } from '../helpers/validation.js';
import { MiB, imageOf, mibSums, qsdCanRun, readAll, sha, useQsdNodes, waitFor } from '../helpers/qsd-nodes.js';
import { frontEnd, frontEndAsync } from '../helpers/vhost-front-end.js';

/**
 * Lazy goldens on a real qemu-storage-daemon: a disk is served while its image still arrives
 * from a throttled loopback origin (QEMU's curl driver) or from another daemon's NBD export,
 * hydration completes in the background, and afterwards the source can go away.
 */

// QEMU's curl block driver (Debian: qemu-block-extra), loaded by qemu-storage-daemon on demand.
const haveCurl = spawnSync('sh', ['-c', 'ls /usr/lib/*/qemu/block-curl.so'], { stdio: 'ignore' }).status === 0;
const canRun = qsdCanRun();

const SIZE = 16 * MiB;
/** Random data with a zero tail, so that hydration meets both. */
function makeImage(size = SIZE): Buffer {
  const b = Buffer.alloc(size);
  randomBytes(size - 4 * MiB).copy(b);
  return b;
}

const q = useQsdNodes('qsdlazy-', { lazyImages: true });
const makeBackend = q.node;
const origins: Origin[] = [];

afterEach(async () => {
  for (const o of origins.splice(0)) await o.stop().catch(() => undefined);
});

// Hydration at a few MiB/s takes seconds; several real daemons may share two busy cores.
describe.skipIf(!canRun || !haveCurl)('lazy goldens over HTTP (QEMU curl driver)', { timeout: 120_000 }, () => {
  it('serves a disk before the image has arrived; after hydration the origin is not needed and served it about once', async () => {
    const image = makeImage();
    const origin = await startOrigin(image, { bytesPerSecond: 2 * MiB });
    origins.push(origin);
    const b = await makeBackend('n');
    const spec: ImageSpec = { name: 'img', source: { http: { url: origin.url, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE };

    const img = await b.ensureImage(spec);
    expect(img.phase).toBe('hydrating');
    const disk = await b.ensureDisk({ id: 'd1', source: { kind: 'image', image: 'img' }, capacityBytes: SIZE });
    const ctrl = await b.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    const head = (await frontEndAsync(ctrl.socketPath, [{ op: 'read', sector: 0, len: MiB }])).results[0];
    expect(head?.status).toBe(0);
    expect(head?.sha256).toBe(sha(image.subarray(0, MiB)));
    // Read while the image is still arriving: the origin has sent less than half of it.
    const during = await imageOf(b, 'img');
    expect(during?.phase).toBe('hydrating');
    expect(during?.message).toMatch(/hydrating/);
    expect(origin.served()).toBeLessThan(SIZE / 2);
    expect(await b.hydrateDisk('d1')).toMatchObject({ id: 'd1', state: 'hydrating' });

    const done = await waitFor('hydration', async () => ((await imageOf(b, 'img'))?.phase === 'ready' ? true : undefined));
    expect(done).toBe(true);
    // One image, plus the head the disk read before hydration reached it and the inspection probe.
    expect(origin.served()).toBeGreaterThanOrEqual(SIZE);
    expect(origin.served()).toBeLessThanOrEqual(SIZE + 2 * MiB);
    expect(await b.hydrateDisk('d1')).toEqual({ id: 'd1', state: 'standalone', percent: 100 });
    await origin.stop();
    expect(await readAll(ctrl.socketPath, SIZE)).toEqual(mibSums(image));
    // A disk cloned afterwards reads the standalone golden too.
    const d2 = await b.ensureDisk({ id: 'd2', source: { kind: 'image', image: 'img' } });
    const c2 = await b.ensureController({ name: 'slot-02/root', diskRef: d2.ref, readonly: true });
    expect(await readAll(c2.socketPath, SIZE)).toEqual(mibSums(image));
    const golden = (await b.observe()).images.find((i) => i.name === 'img');
    expect(golden?.cloneCount).toBe(2);
  });

  it('a SIGKILLed daemon resumes hydration on restart and the data is intact', async () => {
    // Bigger than the few MiB of hydration a kill may lose (lazy.ts: the L2 cache written back).
    const size = 64 * MiB;
    const image = makeImage(size);
    const origin = await startOrigin(image, { bytesPerSecond: 8 * MiB });
    origins.push(origin);
    const b = await makeBackend('n');
    await b.ensureImage({ name: 'img', source: { http: { url: origin.url, sha256: sha(image) } }, format: 'raw', sizeBytes: size });
    const disk = await b.ensureDisk({ id: 'd1', source: { kind: 'image', image: 'img' } });
    await b.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    await waitFor('half hydrated', async () => ((await imageOf(b, 'img'))?.hydratedPercent ?? 0) >= 50);
    const servedBefore = origin.served();
    const pid = Number((await fs.readFile(path.join(q.dir, 'n', 's', 'qsd.pid'), 'utf8')).trim());
    const back = once(b, 'connected');
    process.kill(pid, 'SIGKILL');
    await back;
    // The daemon forgot its exports; the agent ensures them again (the golden reopens with its source).
    const ctrl = await b.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    await waitFor('hydration after restart', async () => ((await imageOf(b, 'img'))?.phase === 'ready' ? true : undefined));
    // Resumed, not restarted: most of what was hydrated before the kill was not fetched again.
    expect(origin.served() - servedBefore).toBeLessThan(size - servedBefore / 2);
    await origin.stop();
    expect(await readAll(ctrl.socketPath, size)).toEqual(mibSums(image));
  });

  it('a new backend on the same state (agent restart) resumes hydration; delete waits for clones and leaves nothing', async () => {
    const image = makeImage();
    const origin = await startOrigin(image, { bytesPerSecond: 2 * MiB });
    origins.push(origin);
    const spec: ImageSpec = { name: 'img', source: { http: { url: origin.url, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE };
    const b1 = await makeBackend('n');
    await b1.ensureImage(spec);
    await waitFor('some hydration', async () => ((await imageOf(b1, 'img'))?.hydratedPercent ?? 0) >= 20);
    await b1.close();
    const b = await makeBackend('n');
    expect((await imageOf(b, 'img'))?.phase).toBe('hydrating');
    await b.ensureDisk({ id: 'd1', source: { kind: 'image', image: 'img' } });
    // Grown while closed: the overlay is resized without opening its (held, remote) backing.
    const disk = await b.ensureDisk({ id: 'd1', source: { kind: 'image', image: 'img' }, capacityBytes: 2 * SIZE });
    expect(disk.sizeBytes).toBe(2 * SIZE);
    const ctrl = await b.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    expect((await rejectionOf(b.deleteImage('img'), BackendError)).kind).toBe('busy');
    await waitFor('hydration', async () => ((await imageOf(b, 'img'))?.phase === 'ready' ? true : undefined));
    await origin.stop();
    expect(await readAll(ctrl.socketPath, SIZE)).toEqual(mibSums(image));
    await b.deleteController('slot-01/root');
    await b.deleteDisk('d1');
    await b.deleteImage('img');
    await b.deleteImage('img');
    expect((await b.observe()).images).toEqual([]);
    expect(await fs.readdir(path.join(q.dir, 'n', 's', 'images'))).toEqual([]);
    expect(await b.qmpExecute('query-named-block-nodes', { flat: true })).toEqual([]);
  });

  it('deleting an image mid-hydration stops the stream and closes its source', async () => {
    const image = makeImage();
    const origin = await startOrigin(image, { bytesPerSecond: 1 * MiB });
    origins.push(origin);
    const b = await makeBackend('n');
    await b.ensureImage({ name: 'img', source: { http: { url: origin.url, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE });
    await waitFor('some hydration', async () => ((await imageOf(b, 'img'))?.hydratedPercent ?? 0) >= 5);
    await b.deleteImage('img');
    expect(await b.qmpExecute('query-block-jobs')).toEqual([]);
    expect(await b.qmpExecute('query-named-block-nodes', { flat: true })).toEqual([]);
    expect(await fs.readdir(path.join(q.dir, 'n', 's', 'images'))).toEqual([]);
    const served = origin.served();
    await new Promise((r) => setTimeout(r, 300));
    expect(origin.served()).toBe(served);
  });

  it('an unreachable origin pauses hydration without failing the disk; it resumes when the origin is back', async () => {
    const image = makeImage();
    let origin = await startOrigin(image, { bytesPerSecond: 2 * MiB });
    origins.push(origin);
    const b = await makeBackend('n');
    await b.ensureImage({ name: 'img', source: { http: { url: origin.url, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE });
    const disk = await b.ensureDisk({ id: 'd1', source: { kind: 'image', image: 'img' } });
    const ctrl = await b.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    await waitFor('some hydration', async () => ((await imageOf(b, 'img'))?.hydratedPercent ?? 0) >= 10);
    await origin.stop();
    const paused = await waitFor('paused', async () => {
      const i = await imageOf(b, 'img');
      return i?.message?.includes('paused') ? i : undefined;
    });
    expect(paused.phase).toBe('hydrating');
    expect((await b.observe()).controllers.map((c) => c.name)).toEqual(['slot-01/root']);
    origin = await startOrigin(image, { bytesPerSecond: 8 * MiB, port: origin.port });
    origins.push(origin);
    await waitFor('hydration after the origin came back', async () => ((await imageOf(b, 'img'))?.phase === 'ready' ? true : undefined));
    await origin.stop();
    expect(await readAll(ctrl.socketPath, SIZE)).toEqual(mibSums(image));
  });

  it('a sha256 mismatch found after hydration fails the image and stops new clones; running disks keep their data', async () => {
    const image = makeImage();
    const origin = await startOrigin(image, { bytesPerSecond: 16 * MiB });
    origins.push(origin);
    const b = await makeBackend('n');
    await b.ensureImage({ name: 'img', source: { http: { url: origin.url, sha256: 'f'.repeat(64) } }, format: 'raw', sizeBytes: SIZE });
    const disk = await b.ensureDisk({ id: 'd1', source: { kind: 'image', image: 'img' } });
    const ctrl = await b.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    const failed = await waitFor('verdict', async () => {
      const i = await imageOf(b, 'img');
      return i?.phase === 'failed' ? i : undefined;
    });
    expect(failed.message).toMatch(/sha256 mismatch/);
    const err = await rejectionOf(b.ensureDisk({ id: 'd2', source: { kind: 'image', image: 'img' } }), BackendError);
    expect(err.kind).toBe('invalid');
    expect(err.message).toMatch(/image img cannot be cloned: sha256 mismatch/);
    expect((await rejectionOf(b.ensureImage({ name: 'img', source: { http: { url: origin.url, sha256: 'f'.repeat(64) } }, format: 'raw' }), BackendError)).kind).toBe('checksum');
    expect((await b.observe()).disks.map((d) => d.id)).toEqual(['d1']);
    expect(await readAll(ctrl.socketPath, SIZE)).toEqual(mibSums(image));
  });

  it('an origin that ignores byte ranges is imported in full instead', async () => {
    const image = makeImage();
    const origin = await startOrigin(image, { ranges: false });
    origins.push(origin);
    const b = await makeBackend('n');
    const img = await b.ensureImage({ name: 'img', source: { http: { url: origin.url, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE });
    expect(img).toMatchObject({ phase: 'ready', sizeBytes: SIZE });
    expect(img.ref.endsWith('img.raw')).toBe(true);
    expect(await fs.readdir(path.join(q.dir, 'n', 's', 'images'))).toEqual(['img.raw']);
  });

  it('refuses a source larger than declared or a raw source that is a qcow2 image, leaving nothing behind', async () => {
    const image = makeImage();
    const origin = await startOrigin(image);
    origins.push(origin);
    const b = await makeBackend('n');
    const big = await rejectionOf(
      b.ensureImage({ name: 'img', source: { http: { url: origin.url, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE - MiB }),
      BackendError,
    );
    expect(big.kind).toBe('invalid');
    expect(big.message).toMatch(/actual size 16777216 bytes is larger than the declared size/);
    const qcow = path.join(q.dir, 'x.qcow2');
    expect(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', qcow, '16M']).status).toBe(0);
    const qOrigin = await startOrigin(await fs.readFile(qcow));
    origins.push(qOrigin);
    const smuggled = await rejectionOf(
      b.ensureImage({ name: 'q', source: { http: { url: qOrigin.url, sha256: 'a'.repeat(64) } }, format: 'raw' }),
      BackendError,
    );
    expect(smuggled.kind).toBe('invalid');
    expect(smuggled.message).toMatch(/is a qcow2 image but declared format raw/);
    const state = await b.observe();
    expect(state.images).toEqual([]);
    expect(await fs.readdir(path.join(q.dir, 'n', 's', 'images'))).toEqual([]);
    const nodes = await b.qmpExecute<Array<{ 'node-name': string }>>('query-named-block-nodes', { flat: true });
    expect(nodes).toEqual([]);
  });
});

describe.skipIf(!canRun)('lazy goldens from a peer (NBD)', { timeout: 120_000 }, () => {
  it('node B serves a disk from node A\'s export at once, hydrates, and keeps every byte after A is gone', async () => {
    const image = makeImage();
    const src = path.join(q.dir, 'src.raw');
    await fs.writeFile(src, image);
    const a = await makeBackend('a', { lazyImages: false });
    await a.ensureImage({ name: 'img', source: { hostPath: { path: src, sha256: sha(image) } }, format: 'raw' });
    await a.ensureDisk({ id: 'a-img', source: { kind: 'image', image: 'img' } });
    const ref = await a.exportDisk('a-img', { listenAddress: { kind: 'unix', path: path.join(q.dir, 'a-nbd.sock') } });

    const b = await makeBackend('b');
    const spec: ImageSpec = { name: 'img', source: { hostPath: { path: '/nonexistent/on-b', sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE, peer: ref };
    const img = await b.ensureImage(spec);
    expect(img.phase).toBe('hydrating');
    const disk = await b.ensureDisk({ id: 'b1', source: { kind: 'image', image: 'img' } });
    const ctrl = await b.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    expect(frontEnd(ctrl.socketPath, [{ op: 'read', sector: 0, len: MiB }]).results[0]?.sha256).toBe(sha(image.subarray(0, MiB)));
    await waitFor('hydration on B', async () => ((await imageOf(b, 'img'))?.phase === 'ready' ? true : undefined));
    await a.unexportDisk('a-img');
    await a.close();
    expect(await readAll(ctrl.socketPath, SIZE)).toEqual(mibSums(image));
  });

  it('a peer that restarts mid-hydration pauses it; B resumes once the export is back and loses nothing', async () => {
    const image = makeImage();
    const src = path.join(q.dir, 'src.raw');
    await fs.writeFile(src, image);
    const a = await makeBackend('a', { lazyImages: false });
    await a.ensureImage({ name: 'img', source: { hostPath: { path: src } }, format: 'raw' });
    await a.ensureDisk({ id: 'a-img', source: { kind: 'image', image: 'img' } });
    const listenAddress = { kind: 'unix' as const, path: path.join(q.dir, 'a-nbd.sock') };
    const ref = await a.exportDisk('a-img', { listenAddress });

    const b = await makeBackend('b', { hydrationBytesPerSecond: 2 * MiB });
    await b.ensureImage({ name: 'img', source: { hostPath: { path: '/nonexistent/on-b', sha256: sha(image) } }, format: 'raw', peer: ref });
    const disk = await b.ensureDisk({ id: 'b1', source: { kind: 'image', image: 'img' } });
    const ctrl = await b.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    await waitFor('some hydration', async () => ((await imageOf(b, 'img'))?.hydratedPercent ?? 0) >= 20);
    const pid = Number((await fs.readFile(path.join(q.dir, 'a', 's', 'qsd.pid'), 'utf8')).trim());
    const back = once(a, 'connected');
    process.kill(pid, 'SIGKILL');
    await back;
    expect((await imageOf(b, 'img'))?.phase).toBe('hydrating');
    expect(await a.exportDisk('a-img', { listenAddress })).toEqual(ref);
    await waitFor('hydration on B after the peer came back', async () => ((await imageOf(b, 'img'))?.phase === 'ready' ? true : undefined));
    await a.close();
    expect(await readAll(ctrl.socketPath, SIZE)).toEqual(mibSums(image));
  });

  it('a disk cloned from another node\'s export takes writes at once and stands alone after hydrateDisk', async () => {
    const image = makeImage();
    const src = path.join(q.dir, 'src.raw');
    await fs.writeFile(src, image);
    const a = await makeBackend('a', { lazyImages: false });
    await a.ensureImage({ name: 'img', source: { hostPath: { path: src } }, format: 'raw' });
    await a.ensureDisk({ id: 'vm', source: { kind: 'image', image: 'img' } });
    const ref = await a.exportDisk('vm', { listenAddress: { kind: 'unix', path: path.join(q.dir, 'a-nbd.sock') } });

    const b = await makeBackend('b');
    const disk = await b.cloneRemoteDisk(ref, 'vm');
    expect(disk).toMatchObject({ id: 'vm', sizeBytes: SIZE, owned: true });
    expect(await b.cloneRemoteDisk(ref, 'vm')).toEqual(disk);
    const ctrl = await b.ensureController({ name: 'slot-01/vm', diskRef: disk.ref, readonly: false });
    expect(frontEnd(ctrl.socketPath, [{ op: 'write', sector: 0, len: 4096, fill: 0x5a }]).results[0]?.status).toBe(0);
    const expected = Buffer.from(image);
    expected.fill(0x5a, 0, 4096);
    const first = await b.hydrateDisk('vm');
    expect(['hydrating', 'standalone']).toContain(first.state);
    await waitFor('disk hydration', async () => ((await b.hydrateDisk('vm')).state === 'standalone' ? true : undefined));
    await a.unexportDisk('vm');
    await a.close();
    expect(await readAll(ctrl.socketPath, SIZE)).toEqual(mibSums(expected));
    expect(await b.hydrateDisk('vm')).toEqual({ id: 'vm', state: 'standalone', percent: 100 });
    const nodes = await b.qmpExecute<Array<{ drv: string }>>('query-named-block-nodes', { flat: true });
    expect(nodes.some((n) => n.drv === 'nbd')).toBe(false);
  });
});
