import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BackendError } from '../../../src/backend/types.js';
import { ensureSlotDir, fixSocketOwnership } from '../../../src/backend/vhost-fs.js';
import { rejectionOf } from '../../helpers/validation.js';

let dir: string;
const servers: net.Server[] = [];
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vfs-'));
});
afterEach(async () => {
  for (const s of servers.splice(0)) s.close();
  await fs.rm(dir, { recursive: true, force: true });
});

const errorOf = (p: Promise<unknown>): Promise<BackendError> => rejectionOf(p, BackendError);

async function socketAt(p: string): Promise<void> {
  const s = net.createServer();
  servers.push(s);
  await new Promise<void>((r) => s.listen(p, r));
}

const uid = process.getuid?.() ?? 0;
const gid = process.getgid?.() ?? 0;

describe('F5: socket ownership never follows a link', () => {
  it('a symbolic link planted at the socket path is refused; its target keeps owner and mode', async () => {
    const victim = path.join(dir, 'victim');
    await fs.writeFile(victim, 'x', { mode: 0o600 });
    const link = path.join(dir, 'sock');
    await fs.symlink(victim, link);
    const err = await errorOf(fixSocketOwnership(link, { uid: 107, gid: 107, mode: 0o666 }));
    expect(err.kind).toBe('invalid');
    expect(err.message).toBe(`socket ${link} is not a socket (a symbolic link); refusing to change its owner or mode`);
    const st = await fs.stat(victim);
    expect([st.uid, st.gid, st.mode & 0o777]).toEqual([uid, gid, 0o600]);
  });

  it('a regular file at the socket path is refused too', async () => {
    const f = path.join(dir, 'sock');
    await fs.writeFile(f, '', { mode: 0o600 });
    expect((await errorOf(fixSocketOwnership(f, { uid, gid, mode: 0o660 }))).message).toContain('not a socket (another kind of file)');
    expect((await fs.stat(f)).mode & 0o777).toBe(0o600);
  });

  it('a real socket gets owner and mode', async () => {
    const s = path.join(dir, 'sock');
    await socketAt(s);
    const owner = uid === 0 ? { uid: 107, gid: 107 } : { uid, gid };
    await fixSocketOwnership(s, { ...owner, mode: 0o660 });
    const st = await fs.lstat(s);
    expect([st.uid, st.gid, st.mode & 0o777]).toEqual([owner.uid, owner.gid, 0o660]);
  });

  it('a missing socket says why (F14: not ENOENT alone)', async () => {
    const s = path.join(dir, 'slot-01', 'root');
    await fs.mkdir(path.dirname(s));
    expect((await errorOf(fixSocketOwnership(s, { uid, gid, mode: 0o660 }))).message).toBe(`socket ${s} does not exist: the backend did not create it`);
  });
});

describe('F17: slot directories are checked, never followed', () => {
  it('makes a slot directory 0755 and accepts it again', async () => {
    const d = await ensureSlotDir(dir, 'slot-01');
    expect((await fs.lstat(d)).mode & 0o777).toBe(0o755);
    expect(await ensureSlotDir(dir, 'slot-01')).toBe(d);
  });

  it('a slot that is a link to another slot is refused (it would show that VM its socket)', async () => {
    await ensureSlotDir(dir, 'slot-01');
    await fs.symlink(path.join(dir, 'slot-01'), path.join(dir, 'slot-02'));
    expect((await errorOf(ensureSlotDir(dir, 'slot-02'))).message).toBe(`slot directory ${path.join(dir, 'slot-02')} is a symbolic link; refusing to serve a socket through it`);
  });

  it('a slot that is a file, or writable by others, or a traversal, is refused', async () => {
    await fs.writeFile(path.join(dir, 'slot-03'), '');
    expect((await errorOf(ensureSlotDir(dir, 'slot-03'))).message).toContain('is not a directory');
    await fs.mkdir(path.join(dir, 'slot-04'));
    await fs.chmod(path.join(dir, 'slot-04'), 0o777);
    expect((await errorOf(ensureSlotDir(dir, 'slot-04'))).message).toContain('writable by group or others (mode 777)');
    for (const s of ['..', '.', 'a/b', '']) expect((await errorOf(ensureSlotDir(dir, s))).kind).toBe('invalid');
  });

  it.skipIf(uid === 0)('a vhost dir the agent cannot write says so (F14)', async () => {
    const ro = path.join(dir, 'ro');
    await fs.mkdir(ro, { mode: 0o555 });
    expect((await errorOf(ensureSlotDir(ro, 'slot-01'))).message).toMatch(/^vhost dir .* is not writable \(EACCES/);
  });
});
