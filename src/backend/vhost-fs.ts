import { constants as fsc } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { slotDir } from '../contract/layout.js';
import { BackendError } from './types.js';

/**
 * The file-system rules of the vhost directory, for every code path that makes a slot
 * directory or fixes a socket (agent executor, backends, migration): nothing is followed
 * through a symbolic link. A slot directory linked to another slot would put one VM's socket
 * where another pod mounts it; a link planted at a socket path would make a chown/chmod as
 * root apply to any file of the node.
 */

export interface SocketOwnership {
  uid: number;
  gid: number;
  mode: number;
}

function describeErrno(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ? `${e.code}: ${e.message}` : String(err);
}

/**
 * Makes `<vhostDir>/<slot>` (0755) or checks the one there: a real directory (not a link),
 * owned by this process's user, not writable by group or others, and writable by us. Errors
 * name the directory and what is wrong with it (a read-only vhost dir says so, not ENOENT).
 */
export async function ensureSlotDir(vhostDir: string, slot: string): Promise<string> {
  if (slot.length === 0 || slot.includes('/') || slot === '.' || slot === '..') {
    throw new BackendError(`slot "${slot}" is not a single directory name`, 'invalid');
  }
  const dir = slotDir(vhostDir, slot);
  try {
    await fs.mkdir(vhostDir, { recursive: true });
  } catch (err) {
    throw new BackendError(`vhost dir ${vhostDir} cannot be made (${describeErrno(err)})`, 'invalid', { cause: err });
  }
  try {
    await fs.mkdir(dir, { mode: 0o755 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new BackendError(`vhost dir ${vhostDir} does not exist (cannot make slot directory ${dir})`, 'notFound', { cause: err });
    if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM') {
      throw new BackendError(`vhost dir ${vhostDir} is not writable (${describeErrno(err)}): cannot make slot directory ${dir}`, 'invalid', { cause: err });
    }
    if (code !== 'EEXIST') throw new BackendError(`slot directory ${dir}: ${describeErrno(err)}`, 'internal', { cause: err });
  }
  const st = await fs.lstat(dir);
  if (st.isSymbolicLink()) throw new BackendError(`slot directory ${dir} is a symbolic link; refusing to serve a socket through it`, 'invalid');
  if (!st.isDirectory()) throw new BackendError(`slot directory ${dir} is not a directory`, 'invalid');
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) throw new BackendError(`slot directory ${dir} is owned by uid ${st.uid}, not by the agent (uid ${uid})`, 'invalid');
  if ((st.mode & 0o022) !== 0) throw new BackendError(`slot directory ${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)})`, 'invalid');
  try {
    await fs.access(dir, fsc.W_OK);
  } catch (err) {
    throw new BackendError(`slot directory ${dir} is not writable (${describeErrno(err)})`, 'invalid', { cause: err });
  }
  return dir;
}

/**
 * Gives a vhost socket to QEMU's user. Only a socket is touched: lstat first (a link or a
 * regular file planted at the path is refused); the mode is set while the socket is still
 * ours (so no CAP_FOWNER is needed), a second lstat must show the same socket, and lchown
 * (which never follows a link) hands it over last.
 */
export async function fixSocketOwnership(socketPath: string, o: SocketOwnership): Promise<void> {
  const before = await fs.lstat(socketPath).catch(async (err: unknown) => {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new BackendError(`socket ${socketPath}: ${describeErrno(err)}`, 'internal', { cause: err });
    // Say why it is missing when we can: a directory the backend cannot write to.
    const dir = path.dirname(socketPath);
    const why = await fs.access(dir, fsc.W_OK).then(
      () => 'the backend did not create it',
      (e: unknown) => `its directory ${dir} is not writable (${describeErrno(e)})`,
    );
    throw new BackendError(`socket ${socketPath} does not exist: ${why}`, 'notFound', { cause: err });
  });
  if (!before.isSocket()) {
    throw new BackendError(`socket ${socketPath} is not a socket (${before.isSymbolicLink() ? 'a symbolic link' : 'another kind of file'}); refusing to change its owner or mode`, 'invalid');
  }
  const uid = process.getuid?.();
  const gid = process.getgid?.();
  // Taken back first when it was given away already (a mode that drifted), so chmod needs no CAP_FOWNER.
  if (uid !== undefined && gid !== undefined && before.uid !== uid && (before.mode & 0o7777) !== o.mode) await fs.lchown(socketPath, uid, gid);
  if ((before.mode & 0o7777) !== o.mode) await fs.chmod(socketPath, o.mode);
  const after = await fs.lstat(socketPath);
  if (!after.isSocket() || after.ino !== before.ino || after.dev !== before.dev) {
    throw new BackendError(`socket ${socketPath} was replaced while its mode was being fixed; refusing to chown it`, 'invalid');
  }
  await fs.lchown(socketPath, o.uid, o.gid);
}
