import { createHash } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QsdBackend } from '../../src/backend/qsd/index.js';
import { nodeNamesFor } from '../../src/backend/qsd/naming.js';
import { BackendError, type ImageSpec } from '../../src/backend/types.js';
import { connectable } from '../helpers/process.js';
import { rejectionOf } from '../helpers/validation.js';

// Needs the real daemon and qemu-img/qemu-io (Debian qemu-system-common, qemu-utils).
const haveQemu = ['qemu-storage-daemon', 'qemu-img', 'qemu-io'].every(
  (b) => spawnSync(b, ['--version'], { stdio: 'ignore' }).status === 0,
);

const MiB = 1024 * 1024;
const IMAGE_SIZE = 4 * MiB;
// The golden image: 0xaa everywhere, so reads that fall through the overlay are recognisable.
const GOLDEN = Buffer.alloc(IMAGE_SIZE, 0xaa);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

let dir: string;
let backend: QsdBackend;
let image: ImageSpec;

async function makeBackend(): Promise<QsdBackend> {
  const b = new QsdBackend({
    stateDir: path.join(dir, 's'),
    vhostDir: path.join(dir, 'v'),
    managed: true,
    restartDelayMs: 50,
    bdevDir: path.join(dir, 'bdevs'),
  });
  await b.start();
  return b;
}

beforeEach(async () => {
  if (!haveQemu) return;
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qsd-'));
  const src = path.join(dir, 'golden-src.raw');
  await fs.writeFile(src, GOLDEN);
  image = { name: 'tiny', source: { hostPath: { path: src, sha256: sha(GOLDEN) } }, format: 'raw' };
  backend = await makeBackend();
});

afterEach(async () => {
  if (!haveQemu) return;
  await backend.close();
  await fs.rm(dir, { recursive: true, force: true });
});

/** qemu-io on an image; `-U` because the daemon may hold the image lock. */
function qemuIo(args: string[]): string {
  const out = spawnSync('qemu-io', args, { encoding: 'utf8', timeout: 20_000 });
  return `${out.stdout}${out.stderr}`;
}

/** Adds an NBD export of a controller's block node on the running daemon, for a test client. */
async function nbdExport(b: QsdBackend, controller: string, writable: boolean): Promise<string> {
  const sock = path.join(dir, 'nbd.sock');
  await b.qmpExecute('nbd-server-start', { addr: { type: 'unix', data: { path: sock } } });
  await b.qmpExecute('block-export-add', {
    type: 'nbd',
    id: 'test-nbd',
    'node-name': nodeNamesFor(controller).format,
    name: 'd',
    writable,
  });
  return `nbd+unix:///d?socket=${sock}`;
}

async function stopNbd(b: QsdBackend): Promise<void> {
  await b.qmpExecute('block-export-del', { id: 'test-nbd' });
  await b.qmpExecute('nbd-server-stop');
}

const errorOf = (p: Promise<unknown>): Promise<BackendError> => rejectionOf(p, BackendError);

describe.skipIf(!haveQemu)('qsd backend against a real qemu-storage-daemon', () => {
  it('serves an image disk on <vhostDir>/<slot>/<disk> and reports it in observe()', async () => {
    const img = await backend.ensureImage(image);
    expect(img).toMatchObject({ name: 'tiny', phase: 'ready', sizeBytes: IMAGE_SIZE, cloneCount: 0 });
    expect((await fs.stat(img.ref)).mode & 0o777).toBe(0o400); // F11: not world-readable

    const disk = await backend.ensureDisk({ id: 'vm1-root', source: { kind: 'image', image: 'tiny' }, capacityBytes: 8 * MiB });
    expect(disk).toMatchObject({ id: 'vm1-root', image: 'tiny', sizeBytes: 8 * MiB, owned: true });
    const ctrl = await backend.ensureController({ name: 'slot-01/rootdisk', diskRef: disk.ref, readonly: false, queues: 2 });
    expect(ctrl.socketPath).toBe(path.join(dir, 'v', 'slot-01', 'rootdisk'));
    expect((await fs.stat(ctrl.socketPath)).isSocket()).toBe(true);
    expect(await connectable(ctrl.socketPath)).toBe(true);

    // Idempotent: asking again changes nothing.
    expect(await backend.ensureController({ name: 'slot-01/rootdisk', diskRef: disk.ref, readonly: false, queues: 2 })).toEqual(ctrl);
    expect(await backend.ensureDisk({ id: 'vm1-root', source: { kind: 'image', image: 'tiny' }, capacityBytes: 8 * MiB })).toEqual(disk);

    const state = await backend.observe();
    expect(state.images).toEqual([{ name: 'tiny', phase: 'ready', sizeBytes: IMAGE_SIZE, ref: img.ref, cloneCount: 1 }]);
    expect(state.disks).toEqual([disk]);
    expect(state.controllers).toEqual([ctrl]);
    expect((await backend.health()).version).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('writes through the daemon land in the overlay, never in the golden image', async () => {
    const img = await backend.ensureImage(image);
    const disk = await backend.ensureDisk({ id: 'vm1-root', source: { kind: 'image', image: 'tiny' } });
    await backend.ensureController({ name: 'slot-01/rootdisk', diskRef: disk.ref, readonly: false });
    const url = await nbdExport(backend, 'slot-01/rootdisk', true);
    expect(qemuIo(['-f', 'raw', '-c', 'write -P 0x5a 0 64k', url])).toMatch(/wrote 65536/);
    await stopNbd(backend);
    await backend.deleteController('slot-01/rootdisk');

    // The overlay has the new data in front and the golden bytes behind it.
    const read = qemuIo(['-r', '-f', 'qcow2', '-c', 'read -P 0x5a 0 64k', '-c', 'read -P 0xaa 64k 64k', disk.ref]);
    expect(read).not.toMatch(/verification failed|error/i);
    expect(read.match(/read 65536/g)).toHaveLength(2);
    expect(sha(await fs.readFile(img.ref))).toBe(sha(GOLDEN));
  });

  it('a readonly controller refuses writes', async () => {
    await backend.ensureImage(image);
    const disk = await backend.ensureDisk({ id: 'vm1-data', source: { kind: 'image', image: 'tiny' } });
    const ctrl = await backend.ensureController({ name: 'slot-02/data', diskRef: disk.ref, readonly: true });
    expect(ctrl.readonly).toBe(true);
    expect((await backend.observe()).controllers[0]?.readonly).toBe(true);
    // The node under the export is read-only: even a writable side export of it is refused...
    await expect(nbdExport(backend, 'slot-02/data', true)).rejects.toThrow(/read-only|read only/i);
    await backend.qmpExecute('nbd-server-stop');
    // ...and a write through a read-only one fails.
    const url = await nbdExport(backend, 'slot-02/data', false);
    expect(qemuIo(['-f', 'raw', '-c', 'write -P 0x5a 0 4k', url])).toMatch(/write failed|read-only|not permitted|permission denied/i);
    await stopNbd(backend);
    await backend.deleteController('slot-02/data');
    expect(qemuIo(['-r', '-f', 'qcow2', '-c', 'read -P 0xaa 0 4k', disk.ref])).not.toMatch(/verification failed/);
  });

  it('deleting a controller removes its socket and its block node, and is idempotent', async () => {
    await backend.ensureImage(image);
    const disk = await backend.ensureDisk({ id: 'd1', source: { kind: 'image', image: 'tiny' } });
    const ctrl = await backend.ensureController({ name: 'slot-03/d1', diskRef: disk.ref, readonly: false });
    await backend.deleteController('slot-03/d1');
    await expect(fs.stat(ctrl.socketPath)).rejects.toThrow(/ENOENT/);
    expect((await backend.observe()).controllers).toEqual([]);
    const nodes = await backend.qmpExecute<Array<{ 'node-name': string }>>('query-named-block-nodes', { flat: true });
    expect(nodes.map((n) => n['node-name'])).not.toContain(nodeNamesFor('slot-03/d1').format);
    await backend.deleteController('slot-03/d1');
    // The slot directory stays: it is mounted into the VM's pod.
    expect((await fs.stat(path.dirname(ctrl.socketPath))).isDirectory()).toBe(true);
  });

  it('restarts a SIGKILLed daemon; disks survive, controllers come back only when ensured', async () => {
    await backend.ensureImage(image);
    const disk = await backend.ensureDisk({ id: 'vm1-root', source: { kind: 'image', image: 'tiny' } });
    const spec = { name: 'slot-01/rootdisk', diskRef: disk.ref, readonly: false };
    await backend.ensureController(spec);

    const events: string[] = [];
    backend.on('disconnected', () => events.push('disconnected'));
    const reconnected = new Promise<void>((r) =>
      backend.on('connected', () => {
        events.push('connected');
        r();
      }),
    );
    const pid = Number(await fs.readFile(path.join(dir, 's', 'qsd.pid'), 'utf8'));
    process.kill(pid, 'SIGKILL');
    await reconnected;
    expect(events).toEqual(['disconnected', 'connected']);
    expect(Number(await fs.readFile(path.join(dir, 's', 'qsd.pid'), 'utf8'))).not.toBe(pid);

    const after = await backend.observe();
    expect(after.disks).toEqual([disk]);
    expect(after.images[0]?.cloneCount).toBe(1);
    expect(after.controllers).toEqual([]);

    const ctrl = await backend.ensureController(spec);
    expect(await connectable(ctrl.socketPath)).toBe(true);
    expect((await backend.observe()).controllers).toHaveLength(1);
  });

  it('refuses bad input with typed errors and leaves nothing half-made', async () => {
    const disksDir = path.join(dir, 's', 'disks');
    const notCached = await errorOf(backend.ensureDisk({ id: 'x1', source: { kind: 'image', image: 'tiny' } }));
    expect(notCached.kind).toBe('notFound');
    expect(notCached.message).toMatch(/image tiny is not cached/);

    await backend.ensureImage(image);
    const small = await errorOf(backend.ensureDisk({ id: 'x1', source: { kind: 'image', image: 'tiny' }, capacityBytes: MiB }));
    expect(small.kind).toBe('invalid');
    expect(small.message).toMatch(/capacity 1048576 bytes is smaller than image tiny \(4194304 bytes\)/);
    expect(await fs.readdir(disksDir)).toEqual([]);

    expect((await errorOf(backend.ensureDisk({ id: '../evil', source: { kind: 'blank' }, capacityBytes: MiB }))).kind).toBe('invalid');
    expect((await errorOf(backend.ensureDisk({ id: 'b1', source: { kind: 'blank' } }))).message).toMatch(/needs capacityBytes/);
    const missing = await errorOf(
      backend.ensureController({ name: 'slot-01/nope', diskRef: path.join(disksDir, 'nope.qcow2'), readonly: false }),
    );
    expect(missing.kind).toBe('notFound');
    expect((await errorOf(backend.ensureController({ name: 'no-slash', diskRef: '/x', readonly: false }))).kind).toBe('invalid');
    expect(await fs.readdir(disksDir)).toEqual([]);
    expect((await backend.observe()).controllers).toEqual([]);

    const missingImage: ImageSpec = { name: 'gone', source: { hostPath: { path: path.join(dir, 'nope.raw') } }, format: 'raw' };
    expect((await errorOf(backend.ensureImage(missingImage))).kind).toBe('notFound');
    expect(await fs.readdir(path.join(dir, 's', 'images'))).toEqual(['tiny.raw']);
  });

  it('grows a disk on request, refuses to delete an image with clones, deletes in order', async () => {
    await backend.ensureImage(image);
    const disk = await backend.ensureDisk({ id: 'g1', source: { kind: 'image', image: 'tiny' } });
    expect(disk.sizeBytes).toBe(IMAGE_SIZE);
    await backend.ensureController({ name: 'slot-04/g1', diskRef: disk.ref, readonly: false });
    // Grown while served: goes through the daemon, which holds the file's lock.
    expect((await backend.ensureDisk({ id: 'g1', source: { kind: 'image', image: 'tiny' }, capacityBytes: 16 * MiB })).sizeBytes).toBe(
      16 * MiB,
    );
    expect((await errorOf(backend.deleteDisk('g1'))).kind).toBe('busy');
    expect((await errorOf(backend.deleteImage('tiny'))).kind).toBe('busy');
    await backend.deleteController('slot-04/g1');
    await backend.deleteDisk('g1');
    await backend.deleteImage('tiny');
    const state = await backend.observe();
    expect(state).toEqual({ images: [], disks: [], controllers: [] });
    await backend.deleteDisk('g1');
    await backend.deleteImage('tiny');
  });

  it('serves blank disks and existing files (bdev) without owning the latter', async () => {
    const blank = await backend.ensureDisk({ id: 'b1', source: { kind: 'blank' }, capacityBytes: 2 * MiB });
    expect(blank).toMatchObject({ sizeBytes: 2 * MiB, owned: true });
    expect(blank.image).toBeUndefined();
    await fs.mkdir(path.join(dir, 'bdevs'));
    const ext = path.join(dir, 'bdevs', 'ext.raw');
    await fs.writeFile(ext, Buffer.alloc(MiB, 0x11));
    const bdev = await backend.ensureDisk({ id: 'e1', source: { kind: 'bdev', bdev: 'ext.raw' } });
    expect(bdev).toMatchObject({ ref: ext, sizeBytes: MiB, owned: false });
    const ctrl = await backend.ensureController({ name: 'slot-05/ext', diskRef: ext, readonly: false });
    expect(await connectable(ctrl.socketPath)).toBe(true);
    await backend.deleteController('slot-05/ext');
    await backend.deleteDisk('e1');
    expect((await fs.readFile(ext)).equals(Buffer.alloc(MiB, 0x11))).toBe(true);
    expect((await backend.observe()).disks.map((d) => d.id)).toEqual(['b1']);
  });

  it('F1: a bdev is a name in the bdev directory, never a host path; controllers open only our files', async () => {
    const secret = path.join(dir, 'secret');
    await fs.writeFile(secret, 'TOP SECRET');
    await fs.mkdir(path.join(dir, 'bdevs'));
    // A link planted by the admin is theirs to make; the name still cannot leave the directory.
    await fs.writeFile(path.join(dir, 'bdevs', 'ok.raw'), Buffer.alloc(MiB));
    for (const bdev of [secret, '/etc/hostname', '../secret', 'a/../../secret', '..', '.', 'lvs/ok.raw']) {
      const err = await errorOf(backend.ensureDisk({ id: 'x1', source: { kind: 'bdev', bdev } }));
      expect(err.kind, bdev).toBe('invalid');
      expect(err.message).toContain(`bdev "${bdev}"`);
    }
    expect((await errorOf(backend.ensureDisk({ id: 'x1', source: { kind: 'bdev', bdev: 'missing' } }))).kind).toBe('notFound');
    // A name that resolves into the agent's own state (a golden) is refused too.
    await backend.ensureImage(image);
    await fs.symlink(path.join(dir, 's', 'images', 'tiny.raw'), path.join(dir, 'bdevs', 'golden'));
    expect((await errorOf(backend.ensureDisk({ id: 'x1', source: { kind: 'bdev', bdev: 'golden' } }))).message).toContain("agent's own state");
    // The controller re-checks what it opens read-write, whoever called it.
    for (const diskRef of [secret, path.join(dir, 's', 'images', 'tiny.raw')]) {
      const err = await errorOf(backend.ensureController({ name: 'slot-06/evil', diskRef, readonly: false }));
      expect(err.kind).toBe('invalid');
      expect(err.message).toContain('refusing to open it');
    }
    expect(await fs.readFile(secret, 'utf8')).toBe('TOP SECRET');
    expect((await backend.observe()).controllers).toEqual([]);
    // Without a bdev directory, no bdev volume at all.
    const bare = new QsdBackend({ stateDir: path.join(dir, 's2'), vhostDir: path.join(dir, 'v2'), managed: true });
    await bare.start();
    try {
      expect((await errorOf(bare.ensureDisk({ id: 'y', source: { kind: 'bdev', bdev: 'ok.raw' } }))).message).toContain('no --bdev-dir');
    } finally {
      await bare.close();
    }
  });

  it('unmanaged: reconnects to a daemon someone else restarts', async () => {
    await backend.close();
    const sock = path.join(dir, 'ext-qmp.sock');
    const startDaemon = async (): Promise<ReturnType<typeof spawn>> => {
      await fs.rm(sock, { force: true });
      const p = spawn('qemu-storage-daemon', ['--chardev', `socket,id=m,path=${sock},server=on,wait=off`, '--monitor', 'chardev=m,mode=control'], {
        stdio: 'ignore',
      });
      for (let i = 0; i < 250 && !(await fs.stat(sock).catch(() => undefined)); i++) await new Promise((r) => setTimeout(r, 20));
      return p;
    };
    let daemon = await startDaemon();
    try {
      backend = new QsdBackend({ stateDir: path.join(dir, 's'), vhostDir: path.join(dir, 'v'), managed: false, qmpSocket: sock, restartDelayMs: 50 });
      await backend.start();
      expect((await backend.health()).ok).toBe(true);
      const events: string[] = [];
      const down = new Promise<void>((r) => backend.once('disconnected', () => r()));
      backend.on('disconnected', () => events.push('disconnected'));
      backend.on('connected', () => events.push('connected'));
      daemon.kill('SIGKILL');
      await down;
      expect((await backend.health()).ok).toBe(false);
      expect((await errorOf(backend.observe())).kind).toBe('transport');
      const up = new Promise<void>((r) => backend.once('connected', () => r()));
      daemon = await startDaemon();
      await up;
      expect(events).toEqual(['disconnected', 'connected']);
      expect((await backend.health()).ok).toBe(true);
    } finally {
      daemon.kill('SIGKILL');
    }
  });

  it('a new backend on the same state dir replaces a daemon left over by a crashed agent', async () => {
    await backend.ensureImage(image);
    const disk = await backend.ensureDisk({ id: 'c1', source: { kind: 'image', image: 'tiny' } });
    await backend.close();
    // What a crashed agent leaves: a daemon holding the disk open (and its image lock),
    // registered in the state dir's pid file.
    const pidFile = path.join(dir, 's', 'qsd.pid');
    const stray = spawn(
      'qemu-storage-daemon',
      ['--blockdev', `driver=file,node-name=f,filename=${disk.ref}`, '--blockdev', 'driver=qcow2,node-name=q,file=f', '--pidfile', pidFile],
      { stdio: 'ignore' },
    );
    const strayExit = new Promise((r) => stray.once('exit', r));
    try {
      for (let i = 0; i < 100 && !(await fs.stat(pidFile).catch(() => undefined)); i++) await new Promise((r) => setTimeout(r, 20));
      backend = await makeBackend();
      const ctrl = await backend.ensureController({ name: 'slot-06/c1', diskRef: disk.ref, readonly: false });
      expect(await connectable(ctrl.socketPath)).toBe(true);
      await strayExit;
      expect(stray.signalCode).toBe('SIGKILL');
    } finally {
      stray.kill('SIGKILL');
    }
  });
});
