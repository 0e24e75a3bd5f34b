import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QsdBackend, type QsdBackendOptions } from '../../src/backend/qsd/index.js';
import { BackendError, type ImageSpec, type ObservedImage, type RemoteDiskRef } from '../../src/backend/types.js';
import { startOrigin, type Origin } from '../helpers/origin.js';
import { frontEndAsync, type Request } from '../helpers/vhost-front-end.js';
import { imageOf as imageNamed, qsdCanRun, waitFor } from '../helpers/qsd-nodes.js';

/**
 * A hydration whose peer died switches to another source, on real qemu-storage-daemons (one
 * per "node", NBD on unix sockets): B hydrates from A (throttled) while a disk on B is read and
 * written; A's daemon is SIGKILLed and not restarted; B's hydration pauses (it says since when),
 * retargetImage moves it onto C's golden (or the origin), it finishes and verifies, and the
 * disk reads back the image with every write made before and after the switch. A restart of B's
 * daemon after the switch reopens the new source, not the dead one.
 */

const canRun = qsdCanRun();

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const KEY = `sha256-${'f'.repeat(40)}`;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const mibSums = (b: Buffer): string[] => Array.from({ length: b.length / MiB }, (_, i) => sha(b.subarray(i * MiB, (i + 1) * MiB)));

let dir: string;
const backends: QsdBackend[] = [];
const daemons: ChildProcess[] = [];
const origins: Origin[] = [];

async function node(name: string, extra: Partial<QsdBackendOptions> = {}): Promise<QsdBackend> {
  const b = new QsdBackend({ stateDir: path.join(dir, name, 's'), vhostDir: path.join(dir, name, 'v'), managed: true, restartDelayMs: 50, hydrationRetryMs: 100, ...extra });
  backends.push(b);
  await b.start();
  return b;
}

/** A node whose daemon the test owns (the backend does not restart it): SIGKILL is for good. */
async function killableNode(name: string): Promise<{ backend: QsdBackend; daemon: ChildProcess }> {
  const qmp = path.join(dir, `${name}.qmp`);
  const daemon = spawn('qemu-storage-daemon', ['--chardev', `socket,path=${qmp},server=on,wait=off,id=m`, '--monitor', 'chardev=m'], { stdio: 'ignore' });
  daemons.push(daemon);
  for (let i = 0; i < 200 && !(await fs.stat(qmp).then(() => true, () => false)); i++) await new Promise((r) => setTimeout(r, 25));
  return { backend: await node(name, { managed: false, qmpSocket: qmp }), daemon };
}

const imageOf = (b: QsdBackend): Promise<ObservedImage | undefined> => imageNamed(b, KEY);


async function io(socketPath: string, requests: Request[]): Promise<Array<{ status: number; sha256?: string }>> {
  return (await frontEndAsync(socketPath, requests)).results;
}

const readAll = (socketPath: string): Promise<Array<{ status: number; sha256?: string }>> =>
  io(socketPath, Array.from({ length: SIZE / MiB }, (_, i) => ({ op: 'read' as const, sector: (i * MiB) / 512, len: MiB })));

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'failover-'));
});

afterEach(async () => {
  for (const b of backends.splice(0)) await b.close();
  for (const d of daemons.splice(0)) d.kill('SIGKILL');
  for (const o of origins.splice(0)) await o.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

describe.skipIf(!canRun)('a hydration whose peer died switches to another source (qsd retargetImage)', { timeout: 180_000 }, () => {
  /** Image on A (killable) and C; B hydrates from A at 1 MiB/s with a disk served and written. */
  async function rig(image: Buffer): Promise<{ a: ChildProcess; b: QsdBackend; refC: RemoteDiskRef; spec: ImageSpec; socket: string; diskRef: string }> {
    const src = path.join(dir, 'src.raw');
    await fs.writeFile(src, image);
    const spec: ImageSpec = { name: KEY, source: { hostPath: { path: src, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE };
    const { backend: a, daemon } = await killableNode('a');
    await a.ensureImage(spec);
    const refA = await a.exportImage(KEY, { listenAddress: { kind: 'unix', path: path.join(dir, 'a-nbd.sock') }, allowedNodes: ['b'] });
    const c = await node('c');
    await c.ensureImage(spec);
    const refC = await c.exportImage(KEY, { listenAddress: { kind: 'unix', path: path.join(dir, 'c-nbd.sock') }, allowedNodes: ['b'] });
    const b = await node('b', { hydrationBytesPerSecond: MiB });
    expect((await b.ensureImage({ ...spec, peer: refA })).phase).toBe('hydrating');
    const disk = await b.ensureDisk({ id: 'd-00000000000f-root', source: { kind: 'image', image: KEY }, capacityBytes: SIZE });
    const ctl = await b.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    // The guest writes its first MiB and reads the end of the image (from A: not hydrated yet).
    const before = await io(ctl.socketPath, [
      { op: 'write', sector: 0, len: MiB, fill: 0x5a },
      { op: 'read', sector: (SIZE - MiB) / 512, len: MiB },
    ]);
    expect(before.map((r) => r.status)).toEqual([0, 0]);
    expect(before[1]?.sha256).toBe(sha(image.subarray(SIZE - MiB)));
    await waitFor('some hydration from A', async () => ((await imageOf(b))?.hydratedPercent ?? 0) >= 15);
    daemon.kill('SIGKILL');
    await new Promise((r) => daemon.once('exit', r));
    return { a: daemon, b, refC, spec, socket: ctl.socketPath, diskRef: disk.ref };
  }

  it('B switches from the SIGKILLed A to C, finishes, verifies, and the disk keeps every write', async () => {
    const image = randomBytes(SIZE);
    const { b, refC, spec, socket, diskRef } = await rig(image);

    // Paused, and says since when (QEMU's NBD client waits out its reconnect-delay first).
    const paused = await waitFor('hydration paused on B', async () => {
      const img = await imageOf(b);
      return img?.sourceUnreachableSinceMs !== undefined ? img : undefined;
    });
    expect(paused.phase).toBe('hydrating');
    expect(paused.message).toMatch(/paused/);
    // Hydrated blocks and the guest's own writes never touch the dead source.
    const during = await io(socket, [{ op: 'read', sector: 0, len: MiB }]);
    expect(during.map((r) => [r.status, r.sha256])).toEqual([[0, sha(Buffer.alloc(MiB, 0x5a))]]);

    // A source of another size is refused, and the golden keeps the source it had.
    const wrong = path.join(dir, 'wrong.raw');
    await fs.writeFile(wrong, randomBytes(8 * MiB));
    const w = await node('w');
    const wrongSpec: ImageSpec = { name: KEY, source: { hostPath: { path: wrong } }, format: 'raw' };
    await w.ensureImage(wrongSpec);
    const refW = await w.exportImage(KEY, { listenAddress: { kind: 'unix', path: path.join(dir, 'w-nbd.sock') }, allowedNodes: ['b'] });
    const refused = await b.retargetImage({ ...spec, peer: refW }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(BackendError);
    expect((refused as BackendError).kind).toBe('invalid');
    expect((await imageOf(b))?.sourceUnreachableSinceMs).toBe(paused.sourceUnreachableSinceMs);

    const switched = await b.retargetImage({ ...spec, peer: refC });
    expect(switched.phase).toBe('hydrating');
    expect(switched.sourceUnreachableSinceMs).toBeUndefined();
    // Idempotent: the same source again changes nothing.
    expect((await b.retargetImage({ ...spec, peer: refC })).phase).toBe('hydrating');
    // The controller still says it serves the disk's file (QEMU now names the node json:{...}):
    // an agent must not take it for another disk and replace it.
    expect((await b.observe()).controllers).toMatchObject([{ name: 'slot-01/root', diskRef }]);
    // The guest writes after the switch, and reads a block that was not hydrated (now from C).
    const after = await io(socket, [
      { op: 'write', sector: (2 * MiB) / 512, len: MiB, fill: 0x66 },
      { op: 'read', sector: (SIZE - 2 * MiB) / 512, len: MiB },
    ]);
    expect(after.map((r) => r.status)).toEqual([0, 0]);
    expect(after[1]?.sha256).toBe(sha(image.subarray(SIZE - 2 * MiB, SIZE - MiB)));

    // Ready means the sha256 of the hydrated golden matched (a mismatch is phase failed).
    const done = await waitFor('hydration on B', async () => {
      const img = await imageOf(b);
      return img?.phase === 'ready' || img?.phase === 'failed' ? img : undefined;
    });
    expect(done.phase).toBe('ready');
    const want = mibSums(image);
    want[0] = sha(Buffer.alloc(MiB, 0x5a));
    want[2] = sha(Buffer.alloc(MiB, 0x66));
    const all = await readAll(socket);
    expect(all.every((r) => r.status === 0)).toBe(true);
    expect(all.map((r) => r.sha256)).toEqual(want);
  });

  it('a daemon restart while the peer is dead: the golden cannot open (nor the disk), says so, and the switch opens it on C', async () => {
    const image = randomBytes(SIZE);
    const { b, refC, spec, socket } = await rig(image);
    const pid = Number(await fs.readFile(path.join(dir, 'b', 's', 'qsd.pid'), 'utf8'));
    const reconnected = new Promise((r) => b.once('connected', r));
    process.kill(pid, 'SIGKILL');
    await reconnected;
    const disk = (await b.observe()).disks.find((d) => d.id === 'd-00000000000f-root');
    // The disk's backing is the golden, whose source does not answer: no controller yet.
    await expect(b.ensureController({ name: 'slot-01/root', diskRef: disk?.ref ?? '', readonly: false })).rejects.toMatchObject({ kind: 'transport' });
    const paused = await waitFor('B says its source is unreachable', async () => {
      const img = await imageOf(b);
      return img?.sourceUnreachableSinceMs !== undefined ? img : undefined;
    });
    expect(paused.phase).toBe('hydrating');
    expect((await b.retargetImage({ ...spec, peer: refC })).phase).toBe('hydrating');
    const ctl = await b.ensureController({ name: 'slot-01/root', diskRef: disk?.ref ?? '', readonly: false });
    expect(ctl.socketPath).toBe(socket);
    const done = await waitFor('hydration on B', async () => {
      const img = await imageOf(b);
      return img?.phase === 'ready' || img?.phase === 'failed' ? img : undefined;
    });
    expect(done.phase).toBe('ready');
    const want = mibSums(image);
    want[0] = sha(Buffer.alloc(MiB, 0x5a));
    expect((await readAll(socket)).map((r) => r.sha256)).toEqual(want);
  });

  it('B switches to the origin over HTTP, and a daemon restart after the switch reopens the origin, not the dead peer', async () => {
    const image = randomBytes(SIZE);
    const { b, spec, socket } = await rig(image);
    await waitFor('hydration paused on B', async () => ((await imageOf(b))?.sourceUnreachableSinceMs !== undefined ? true : undefined));
    const origin = await startOrigin(image);
    origins.push(origin);
    const fromOrigin: ImageSpec = { ...spec, source: { http: { url: origin.url, sha256: sha(image) } } };
    expect((await b.retargetImage(fromOrigin)).phase).toBe('hydrating');

    // B's daemon dies too and comes back (managed): the golden reopens on the recorded origin.
    const pid = Number(await fs.readFile(path.join(dir, 'b', 's', 'qsd.pid'), 'utf8'));
    const reconnected = new Promise((r) => b.once('connected', r));
    process.kill(pid, 'SIGKILL');
    await reconnected;
    // The managed daemon is new: its disk's controller is recreated as the agent would.
    const disk = (await b.observe()).disks.find((d) => d.id === 'd-00000000000f-root');
    const ctl = await b.ensureController({ name: 'slot-01/root', diskRef: disk?.ref ?? '', readonly: false });
    expect(ctl.socketPath).toBe(socket);
    const done = await waitFor('hydration on B', async () => {
      const img = await imageOf(b);
      return img?.phase === 'ready' || img?.phase === 'failed' ? img : undefined;
    });
    expect(done.phase).toBe('ready');
    expect(origin.served()).toBeGreaterThan(0);
    const want = mibSums(image);
    want[0] = sha(Buffer.alloc(MiB, 0x5a));
    const all = await readAll(socket);
    expect(all.map((r) => r.sha256)).toEqual(want);
  });
});
