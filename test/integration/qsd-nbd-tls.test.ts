import { randomBytes } from 'node:crypto';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { QsdBackend } from '../../src/backend/qsd/index.js';
import { nbdUri } from '../../src/backend/qsd/sources.js';
import type { ListenAddress, RemoteDiskRef } from '../../src/backend/remote.js';
import { BackendError, type ImageSpec } from '../../src/backend/types.js';
import { standaloneAgentArgs } from '../helpers/agent.js';
import { exited, killAll, startCli } from '../helpers/process.js';
import { rejectionOf } from '../helpers/validation.js';
import { MiB, imageOf, mibSums, qsdCanRun, readAll, sha, useQsdNodes, waitFor } from '../helpers/qsd-nodes.js';
import { frontEnd } from '../helpers/vhost-front-end.js';

/**
 * TLS-PSK on the qsd driver's NBD traffic, with real qemu-storage-daemons on loopback TCP: nodes
 * holding the cluster's key read each other's goldens and migration exports; a client without
 * the key (plain NBD, or another key) reads nothing; a key file others can read is refused.
 */

const canRun = qsdCanRun({ qemuIo: true });

const SIZE = 8 * MiB;
const KEY_NAME = `sha256-${'1'.repeat(40)}`;

const q = useQsdNodes('qsdtls-');
const procs: ChildProcess[] = [];

/** A free loopback port (the NBD server binds it right after). */
async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** A keys.psk file of mode 0600 in its own directory; returns the file and its key (hex). */
async function pskFile(name: string, mode = 0o600): Promise<{ file: string; hex: string }> {
  const d = path.join(q.dir, `psk-${name}`);
  await fs.mkdir(d, { recursive: true });
  const hex = randomBytes(32).toString('hex');
  const file = path.join(d, 'keys.psk');
  await fs.writeFile(file, `kubevirt-spdk:${hex}\n`, { mode });
  await fs.chmod(file, mode);
  return { file, hex };
}

const { node } = q;

afterEach(async () => {
  await killAll(procs);
});

describe.skipIf(!canRun)('NBD with the cluster PSK (qsd, TLS-PSK)', { timeout: 150_000 }, () => {
  /** Node A with a complete golden exported to peers and a disk exported for migration, over TCP. */
  async function nodeA(psk: string): Promise<{ a: QsdBackend; image: Buffer; golden: RemoteDiskRef; disk: RemoteDiskRef; spec: ImageSpec }> {
    const image = Buffer.alloc(SIZE);
    randomBytes(SIZE - 2 * MiB).copy(image);
    const src = path.join(q.dir, 'src.raw');
    await fs.writeFile(src, image);
    const a = await node('a', { nbdPsk: psk });
    const spec: ImageSpec = { name: KEY_NAME, source: { hostPath: { path: src, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE };
    await a.ensureImage(spec);
    const listenAddress: ListenAddress = { kind: 'tcp', host: '127.0.0.1', port: await freePort() };
    const golden = await a.exportImage(KEY_NAME, { listenAddress, allowedNodes: ['b'] });
    await a.ensureDisk({ id: 'vm', source: { kind: 'image', image: KEY_NAME }, capacityBytes: SIZE });
    const disk = await a.exportDisk('vm', { listenAddress });
    return { a, image, golden, disk, spec };
  }

  it('a node with the same key hydrates a lazy golden from the peer and clones and attaches its migration export', async () => {
    const { file } = await pskFile('cluster');
    const { image, golden, disk, spec } = await nodeA(file);
    const b = await node('b', { nbdPsk: path.dirname(file) });

    // Lazy golden from the peer's read-only export: a disk reads it at once, and it hydrates.
    const img = await b.ensureImage({ ...spec, source: { hostPath: { path: '/nonexistent/on-b', sha256: sha(image) } }, peer: golden });
    expect(img.phase).toBe('hydrating');
    const d = await b.ensureDisk({ id: 'lazy', source: { kind: 'image', image: KEY_NAME }, capacityBytes: SIZE });
    const ctl = await b.ensureController({ name: 'slot-01/root', diskRef: d.ref, readonly: false });
    expect(frontEnd(ctl.socketPath, [{ op: 'read', sector: 0, len: MiB }]).results[0]?.sha256).toBe(sha(image.subarray(0, MiB)));
    await waitFor('hydration on B', async () => (await imageOf(b, KEY_NAME))?.phase === 'ready');
    expect(await readAll(ctl.socketPath, SIZE)).toEqual(mibSums(image));

    // Migration: a clone over the writable export, and a plain attach of it.
    const clone = await b.cloneRemoteDisk(disk, 'moved');
    await waitFor('disk hydration', async () => (await b.hydrateDisk('moved')).state === 'standalone');
    const cctl = await b.ensureController({ name: 'slot-02/moved', diskRef: clone.ref, readonly: false });
    expect(await readAll(cctl.socketPath, SIZE)).toEqual(mibSums(image));
    const attached = await b.attachRemoteDisk(disk, 'att');
    expect(attached.sizeBytes).toBe(SIZE);
    await b.detachRemoteDisk('att');
  });

  it('both daemons restarted (SIGKILL) mid-hydration: credentials are made again and hydration completes over TLS', async () => {
    const { file } = await pskFile('cluster');
    const { a, image, golden, spec } = await nodeA(file);
    const b = await node('b', { nbdPsk: file, hydrationBytesPerSecond: MiB });
    await b.ensureImage({ ...spec, source: { hostPath: { path: '/nonexistent/on-b', sha256: sha(image) } }, peer: golden });
    await waitFor('some hydration', async () => ((await imageOf(b, KEY_NAME))?.hydratedPercent ?? 0) >= 10);
    for (const [backend, name] of [[b, 'b'], [a, 'a']] as const) {
      const pid = Number((await fs.readFile(path.join(q.dir, name, 's', 'qsd.pid'), 'utf8')).trim());
      const back = once(backend, 'connected');
      process.kill(pid, 'SIGKILL');
      await back;
    }
    // The peer's new daemon has no server yet: the agent exports again (as its reconciler would).
    const addr = golden.transport === 'nbd' ? golden.address : undefined;
    expect(await a.exportImage(KEY_NAME, { listenAddress: addr!, allowedNodes: ['b'] })).toEqual(golden);
    await waitFor('hydration on B after both restarts', async () => (await imageOf(b, KEY_NAME))?.phase === 'ready');
    const d = await b.ensureDisk({ id: 'lazy', source: { kind: 'image', image: KEY_NAME }, capacityBytes: SIZE });
    const ctl = await b.ensureController({ name: 'slot-01/root', diskRef: d.ref, readonly: false });
    expect(await readAll(ctl.socketPath, SIZE)).toEqual(mibSums(image));
  });

  it('a client without the key reads nothing: plain qemu-img/qemu-io, and a daemon holding another key', async () => {
    const { file } = await pskFile('cluster');
    const { golden, disk, spec } = await nodeA(file);
    for (const ref of [golden, disk]) {
      const info = spawnSync('qemu-img', ['info', nbdUri(ref as Extract<RemoteDiskRef, { transport: 'nbd' }>)], { encoding: 'utf8', timeout: 30_000 });
      expect(info.status).not.toBe(0);
      expect(info.stderr).toMatch(/TLS/);
      const read = spawnSync('qemu-io', ['-r', '-f', 'raw', '-c', 'read 0 512', nbdUri(ref as Extract<RemoteDiskRef, { transport: 'nbd' }>)], { encoding: 'utf8', timeout: 30_000 });
      expect(read.status).not.toBe(0);
      expect(read.stdout).not.toMatch(/read 512\/512 bytes/);
    }

    const other = await pskFile('other');
    const c = await node('c', { nbdPsk: other.file });
    const lazy = await rejectionOf(c.ensureImage({ ...spec, source: { hostPath: { path: '/nonexistent/on-c' } }, peer: golden }), BackendError);
    expect(lazy.message).toMatch(/TLS|handshake/i);
    expect(lazy.message).not.toContain(other.hex);
    expect(await imageOf(c, KEY_NAME)).toBeUndefined();
    expect((await rejectionOf(c.cloneRemoteDisk(disk, 'moved'), BackendError)).message).toMatch(/TLS|handshake/i);
    await expect(c.attachRemoteDisk(disk, 'att')).rejects.toThrow(/TLS|handshake/i);
    const nodes = await c.qmpExecute<Array<{ drv: string }>>('query-named-block-nodes', { flat: true });
    expect(nodes.some((n) => n.drv === 'nbd')).toBe(false);

    // A node with no key at all: the server wants TLS first.
    const plain = await node('p', {});
    await expect(plain.attachRemoteDisk(disk, 'att')).rejects.toThrow(/TLS/);
  });

  it('the same qemu-img reads the export once it is given the key (the refusal above is the key, not the export)', async () => {
    const { file } = await pskFile('cluster');
    const { golden } = await nodeA(file);
    const ref = golden as Extract<RemoteDiskRef, { transport: 'nbd' }>;
    const addr = ref.address as Extract<ListenAddress, { kind: 'tcp' }>;
    const res = spawnSync(
      'qemu-io',
      [
        '--object',
        `tls-creds-psk,id=t,endpoint=client,dir=${path.dirname(file)},username=kubevirt-spdk`,
        '--image-opts',
        '-r',
        '-c',
        'read 0 512',
        `driver=nbd,server.type=inet,server.host=${addr.host},server.port=${addr.port},export=${ref.exportName},tls-creds=t`,
      ],
      { encoding: 'utf8', timeout: 30_000 },
    );
    expect(res.stderr).toBe('');
    expect(res.stdout).toMatch(/read 512\/512 bytes/);
  });

  it('a daemon that outlived a keyless agent with a plain NBD server: a keyed agent refuses to export on it', async () => {
    // An unmanaged daemon: it stays when its backend closes (as a daemon outliving its agent).
    const qmp = path.join(q.dir, 'u-qmp.sock');
    const daemon = spawn('qemu-storage-daemon', ['--chardev', `socket,id=m,path=${qmp},server=on,wait=off`, '--monitor', 'chardev=m,mode=control'], { stdio: 'ignore' });
    procs.push(daemon);
    await waitFor('daemon QMP socket', () => fs.stat(qmp).then(() => true, () => false), 10_000);
    const image = randomBytes(SIZE);
    const src = path.join(q.dir, 'src.raw');
    await fs.writeFile(src, image);
    const opts = { stateDir: path.join(q.dir, 'u', 's'), vhostDir: path.join(q.dir, 'u', 'v'), managed: false, qmpSocket: qmp } as const;
    const listenAddress: ListenAddress = { kind: 'tcp', host: '127.0.0.1', port: await freePort() };
    const plain = await node('u', opts);
    await plain.ensureImage({ name: KEY_NAME, source: { hostPath: { path: src } }, format: 'raw', sizeBytes: SIZE });
    await plain.exportImage(KEY_NAME, { listenAddress, allowedNodes: [] });
    await plain.close();

    const { file } = await pskFile('cluster');
    const keyed = await node('u', { ...opts, nbdPsk: file });
    await expect(keyed.exportImage(KEY_NAME, { listenAddress, allowedNodes: [] })).rejects.toThrow(
      'NBD server already runs in qemu-storage-daemon without TLS credentials; restart the daemon to serve with the NBD PSK',
    );
  });

  it('refuses a key file others can read, or a malformed one, at start: names the file and the rule, never the key', async () => {
    const open = await pskFile('open', 0o644);
    const b = new QsdBackend({ stateDir: path.join(q.dir, 'x', 's'), vhostDir: path.join(q.dir, 'x', 'v'), managed: true, nbdPsk: open.file });
    q.track(b);
    const err = await rejectionOf(b.start(), BackendError);
    expect(err.message).toContain(open.file);
    expect(err.message).toMatch(/world-readable/);
    expect(err.message).not.toContain(open.hex);
    // Refused before the daemon was started.
    await expect(fs.stat(path.join(q.dir, 'x', 's', 'qsd.pid'))).rejects.toThrow();

    const bad = path.join(q.dir, 'bad.psk');
    const secret = randomBytes(32).toString('hex');
    await fs.writeFile(bad, `${secret}\n`, { mode: 0o600 });
    const b2 = new QsdBackend({ stateDir: path.join(q.dir, 'y', 's'), vhostDir: path.join(q.dir, 'y', 'v'), managed: true, nbdPsk: bad });
    q.track(b2);
    const err2 = await rejectionOf(b2.start(), BackendError);
    expect(err2.message).toContain(`NBD PSK file ${bad}: line 1 is not`);
    expect(err2.message).not.toContain(secret);
  });
});

describe.skipIf(!canRun)('the agent process and --nbd-psk-file', { timeout: 120_000 }, () => {
  async function standalone(...more: string[]): Promise<{ code: number | null; out: string }> {
    await fs.mkdir(path.join(q.dir, 'vmis'), { recursive: true });
    await fs.writeFile(path.join(q.dir, 'images.yaml'), '');
    const p = startCli(standaloneAgentArgs('qsd', { dir: q.dir }, '--once', '--timeout', '30s', ...more), procs);
    const code = await exited(p);
    return { code, out: p.out.join('') };
  }

  it('a key file others can read stops the agent: exit 1, the file and the rule named, the key not printed', async () => {
    const open = await pskFile('open', 0o644);
    const r = await standalone('--nbd-psk-file', open.file);
    expect(r.code).toBe(1);
    expect(r.out).toContain(`NBD PSK file ${open.file}: is accessible by others (mode 0644); it must not be world-readable`);
    expect(r.out).not.toContain(open.hex);
  });

  it('without a key the agent runs and warns once that NBD is unauthenticated; with one it says TLS-PSK and never prints the key', async () => {
    const plain = await standalone();
    expect(plain.code).toBe(0);
    expect(plain.out.match(/"event":"nbd.unauthenticated"/g)).toHaveLength(1);
    const key = await pskFile('cluster');
    const tls = await standalone('--nbd-psk-file', key.file);
    expect(tls.code).toBe(0);
    expect(tls.out).toContain('"event":"nbd.tls"');
    expect(tls.out).not.toContain('nbd.unauthenticated');
    expect(tls.out).not.toContain(key.hex);
  });
});
