import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../../log.js';
import { BackendError } from '../types.js';

/**
 * TLS-PSK on the qsd driver's NBD traffic (goldens served to peers, migration's exports, and
 * every NBD client node this driver opens). QEMU's `tls-creds-psk` object reads
 * `<dir>/keys.psk`, lines `username:hexkey`: a server accepts any line's user with its key, a
 * client presents one username and the key its line gives. Every node holds the same file
 * (a Secret), so a node without the key can neither read nor write an export: the NBD server
 * refuses every option before the TLS handshake, and the handshake fails without the key.
 *
 * The key itself never passes through QMP, logs or errors: QEMU is told the directory only,
 * and a bad file is reported by its path and line number.
 */

export const PSK_FILE_NAME = 'keys.psk';
export const NBD_TLS_SERVER_ID = 'kspdk-nbd-tls-server';
export const NBD_TLS_CLIENT_ID = 'kspdk-nbd-tls-client';
/** 128 bits at least: a short PSK can be guessed offline from one recorded handshake. */
const MIN_KEY_HEX = 32;

export interface NbdPsk {
  /** The directory QEMU reads `keys.psk` from. */
  dir: string;
  /** The username this node presents as a client (the file's first line). */
  username: string;
}

/**
 * The problem with a keys.psk file's text, if any (pure). Names lines by number only: the
 * text is a secret.
 */
export function pskTextProblem(text: string): { problem: string } | { username: string } {
  const lines = text.split('\n').map((l) => l.trim());
  let username: string | undefined;
  for (const [i, line] of lines.entries()) {
    if (line === '') continue;
    const m = /^([^:\s]+):([0-9a-fA-F]+)$/.exec(line);
    if (!m) return { problem: `line ${i + 1} is not \`username:hexkey\` (a username without ':' or spaces, then hex digits)` };
    const hex = m[2] ?? '';
    if (hex.length % 2 !== 0) return { problem: `line ${i + 1}: the key has an odd number of hex digits` };
    if (hex.length < MIN_KEY_HEX) return { problem: `line ${i + 1}: the key is shorter than ${MIN_KEY_HEX / 2} bytes (${MIN_KEY_HEX} hex digits)` };
    username ??= m[1];
  }
  return username === undefined ? { problem: 'has no `username:hexkey` line' } : { username };
}

/** The rule on the file's mode (pure): no permission at all for others. */
export function pskModeProblem(mode: number): string | undefined {
  if ((mode & 0o007) === 0) return undefined;
  return `is accessible by others (mode ${(mode & 0o777).toString(8).padStart(4, '0')}); it must not be world-readable: chmod 600 it (a Secret volume: defaultMode 0400)`;
}

/**
 * Checks a PSK file (or a directory holding `keys.psk`) and returns where QEMU finds it. A file
 * under another name is copied (mode 0600) to `<copyDir>/keys.psk`, as QEMU wants that name.
 */
export async function loadNbdPsk(given: string, copyDir: string): Promise<NbdPsk> {
  const fail = (file: string, rule: string, cause?: unknown): never => {
    throw new BackendError(`NBD PSK file ${file}: ${rule}`, 'invalid', cause !== undefined ? { cause } : undefined);
  };
  const st = await fs.stat(given).catch((e: unknown) => fail(given, `cannot be read: ${(e as Error).message}`, e));
  const file = st.isDirectory() ? path.join(given, PSK_FILE_NAME) : given;
  const fst = st.isDirectory() ? await fs.stat(file).catch((e: unknown) => fail(file, `cannot be read: ${(e as Error).message}`, e)) : st;
  if (!fst.isFile()) fail(file, 'is not a regular file');
  const modeProblem = pskModeProblem(fst.mode);
  if (modeProblem !== undefined) fail(file, modeProblem);
  const text = await fs.readFile(file, 'utf8').catch((e: unknown) => fail(file, `cannot be read: ${(e as Error).message}`, e));
  const parsed = pskTextProblem(text);
  if ('problem' in parsed) return fail(file, parsed.problem);
  if (path.basename(file) === PSK_FILE_NAME) return { dir: path.dirname(path.resolve(file)), username: parsed.username };
  await fs.mkdir(copyDir, { recursive: true, mode: 0o700 });
  await fs.chmod(copyDir, 0o700);
  const copy = path.join(copyDir, PSK_FILE_NAME);
  await fs.rm(copy, { force: true });
  await fs.writeFile(copy, text, { mode: 0o600, flag: 'wx' });
  return { dir: path.resolve(copyDir), username: parsed.username };
}

type Exec = (command: string, args: Record<string, unknown> | undefined, what: string) => Promise<unknown>;

/**
 * The credentials objects in the daemon, made on first use after each (re)start of the daemon
 * (a new daemon has none; `object-add` of one that exists is a no-op here). Without a PSK,
 * NBD stays as before: plain and open to whoever reaches the server.
 */
export class NbdTls {
  private psk: NbdPsk | undefined;

  constructor(private readonly exec: Exec) {}

  get enabled(): boolean {
    return this.psk !== undefined;
  }

  /** Loads and checks the key (QsdBackend.start), or says once that NBD is unauthenticated. */
  async load(given: string | undefined, copyDir: string, log: Logger): Promise<void> {
    if (given === undefined) {
      this.psk = undefined;
      log.warn(
        { event: 'nbd.unauthenticated' },
        'no NBD PSK: NBD exports (goldens served to peers, migration exports), when this node serves any, are open to any host that reaches its NBD server',
      );
      return;
    }
    this.psk = await loadNbdPsk(given, copyDir);
    log.info({ event: 'nbd.tls', dir: this.psk.dir, username: this.psk.username }, 'NBD traffic uses TLS-PSK');
  }

  /** Arguments to merge into nbd-server-start. */
  async serverArgs(): Promise<Record<string, unknown>> {
    return (await this.serverCreds()).args;
  }

  /**
   * The server's arguments, and whether its credentials object was made just now: then no NBD
   * server already running in this daemon can be using it (it was started without TLS).
   */
  serverCreds(): Promise<{ args: Record<string, unknown>; created: boolean }> {
    return this.creds('server');
  }

  /** Arguments to merge into the blockdev-add of an NBD client node. */
  async clientArgs(): Promise<Record<string, unknown>> {
    return (await this.creds('client')).args;
  }

  private async creds(endpoint: 'server' | 'client'): Promise<{ args: Record<string, unknown>; created: boolean }> {
    const psk = this.psk;
    if (!psk) return { args: {}, created: false };
    const id = endpoint === 'server' ? NBD_TLS_SERVER_ID : NBD_TLS_CLIENT_ID;
    let created = true;
    try {
      await this.exec(
        'object-add',
        { 'qom-type': 'tls-creds-psk', id, endpoint, dir: psk.dir, ...(endpoint === 'client' ? { username: psk.username } : {}) },
        `NBD TLS credentials (${endpoint})`,
      );
    } catch (e) {
      if (!(e instanceof BackendError && /duplicate|already exists/i.test(e.message))) throw e;
      created = false;
      // Made earlier in this daemon's life; by another configuration only if the daemon
      // outlived an agent that had another key: using it would be the wrong key.
      const want: Record<string, string> = { dir: psk.dir, ...(endpoint === 'client' ? { username: psk.username } : {}) };
      for (const [property, value] of Object.entries(want)) {
        const have = await this.exec('qom-get', { path: `/objects/${id}`, property }, `NBD TLS credentials (${endpoint}): ${property}`);
        if (have !== value) {
          throw new BackendError(
            `NBD TLS credentials ${id} in qemu-storage-daemon have ${property} ${JSON.stringify(have)}, not ${JSON.stringify(value)}: restart the daemon to change the key`,
            'invalid',
          );
        }
      }
    }
    return { args: { 'tls-creds': id }, created };
  }
}
