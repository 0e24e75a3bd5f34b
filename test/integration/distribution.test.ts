import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { QsdBackend } from '../../src/backend/qsd/index.js';
import type { ImageSpec, RemoteDiskRef } from '../../src/backend/types.js';
import { MiB, imageOf, mibSums, qsdCanRun, readAll, sha, useQsdNodes, waitFor } from '../helpers/qsd-nodes.js';
import { frontEnd } from '../helpers/vhost-front-end.js';

/**
 * Goldens served node to node on real qemu-storage-daemons (one per "node", NBD on unix
 * sockets): node B serves a disk from node A's golden at once, takes writes while it hydrates,
 * and keeps running after A's export is gone; the export is read-only; a hydrating golden can
 * itself be a source (C from B while B still hydrates from A).
 */

const canRun = qsdCanRun({ qemuIo: true });
const SIZE = 16 * MiB;
const q = useQsdNodes('distrib-');
const { node } = q;

const nbdUri = (ref: RemoteDiskRef): string => (ref.transport === 'nbd' && ref.address.kind === 'unix' ? `nbd+unix:///${ref.exportName}?socket=${ref.address.path}` : '');

describe.skipIf(!canRun)('goldens served to peers over NBD (qsd exportImage)', { timeout: 150_000 }, () => {
  const KEY = `sha256-${'0'.repeat(40)}`;

  async function nodeA(image: Buffer): Promise<{ a: QsdBackend; ref: RemoteDiskRef; spec: ImageSpec }> {
    const src = path.join(q.dir, 'src.raw');
    await fs.writeFile(src, image);
    const a = await node('a');
    const spec: ImageSpec = { name: KEY, source: { hostPath: { path: src, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE };
    await a.ensureImage(spec);
    const ref = await a.exportImage(KEY, { listenAddress: { kind: 'unix', path: path.join(q.dir, 'a-nbd.sock') }, allowedNodes: ['b'] });
    return { a, ref, spec };
  }

  it('node B serves a disk from A\'s golden at once, takes writes while it hydrates, and keeps running after A\'s export is gone', async () => {
    const image = Buffer.alloc(SIZE);
    randomBytes(SIZE - 4 * MiB).copy(image);
    const { a, ref, spec } = await nodeA(image);
    expect(ref).toMatchObject({ transport: 'nbd', exportName: `img.${KEY}`, sizeBytes: SIZE });

    // B hydrates slowly (1 MiB/s): the disk is served long before the golden is whole.
    const b = await node('b', { hydrationBytesPerSecond: MiB });
    const img = await b.ensureImage({ ...spec, source: { hostPath: { path: '/nonexistent/on-b', sha256: sha(image) } }, peer: ref });
    expect(img.phase).toBe('hydrating');
    const disk = await b.ensureDisk({ id: 'd-000000000000-root', source: { kind: 'image', image: KEY }, capacityBytes: SIZE });
    const ctl = await b.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    // The guest reads the end of the image (not hydrated yet: from A) and writes while B hydrates.
    const last = (SIZE - 5 * MiB) / 512;
    const res = frontEnd(ctl.socketPath, [
      { op: 'read', sector: last, len: MiB },
      { op: 'write', sector: 0, len: MiB, fill: 0x5a },
      { op: 'read', sector: 0, len: MiB },
    ]);
    expect(res.results.map((r) => r.status)).toEqual([0, 0, 0]);
    expect(res.results[0]?.sha256).toBe(sha(image.subarray(SIZE - 5 * MiB, SIZE - 4 * MiB)));
    expect(res.results[2]?.sha256).toBe(sha(Buffer.alloc(MiB, 0x5a)));
    const during = await imageOf(b, KEY);
    expect(during?.phase).toBe('hydrating');

    await waitFor('hydration on B', async () => ((await imageOf(b, KEY))?.phase === 'ready' ? true : undefined));
    // A stops serving (and goes away): B's golden stands alone, the guest's data is intact.
    await a.unexportImage(KEY);
    await a.close();
    const want = mibSums(image);
    want[0] = sha(Buffer.alloc(MiB, 0x5a));
    expect(await readAll(ctl.socketPath, SIZE)).toEqual(want);
  });

  it('the export is read-only, is idempotent, and goes with the golden', async () => {
    const image = Buffer.concat([randomBytes(4 * MiB), Buffer.alloc(SIZE - 4 * MiB)]);
    const { a, ref } = await nodeA(image);
    expect(await a.exportImage(KEY, { listenAddress: { kind: 'unix', path: path.join(q.dir, 'a-nbd.sock') }, allowedNodes: ['b', 'c'] })).toEqual(ref);
    const read = spawnSync('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0 8M 1M', nbdUri(ref)], { encoding: 'utf8' });
    expect(read.status).toBe(0);
    const write = spawnSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 512', nbdUri(ref)], { encoding: 'utf8' });
    expect(`${write.stdout}${write.stderr}`).toMatch(/read-only|Permission denied|not supported|failed/i);
    // The golden is untouched.
    const golden = await imageOf(a, KEY);
    expect(sha(await fs.readFile(golden?.ref ?? ''))).toBe(sha(image));
    await a.deleteImage(KEY);
    const gone = spawnSync('qemu-io', ['-r', '-f', 'raw', '-c', 'read 0 512', nbdUri(ref)], { encoding: 'utf8' });
    expect(gone.status).not.toBe(0);
    expect(await imageOf(a, KEY)).toBeUndefined();
  });

  it('a hydrating golden is a source too: C reads B\'s golden while B still hydrates from A', async () => {
    const image = randomBytes(SIZE);
    const { a, ref, spec } = await nodeA(image);
    const b = await node('b', { hydrationBytesPerSecond: 2 * MiB });
    await b.ensureImage({ ...spec, peer: ref });
    const refB = await b.exportImage(KEY, { listenAddress: { kind: 'unix', path: path.join(q.dir, 'b-nbd.sock') }, allowedNodes: ['c'] });
    const c = await node('c');
    expect((await c.ensureImage({ ...spec, peer: refB })).phase).toBe('hydrating');
    await waitFor('hydration on C', async () => ((await imageOf(c, KEY))?.phase === 'ready' ? true : undefined));
    await waitFor('hydration on B', async () => ((await imageOf(b, KEY))?.phase === 'ready' ? true : undefined));
    await a.close();
    await b.close();
    const disk = await c.ensureDisk({ id: 'd-000000000001-root', source: { kind: 'image', image: KEY } });
    const ctl = await c.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: true });
    expect(await readAll(ctl.socketPath, SIZE)).toEqual(mibSums(image));
  });
});
