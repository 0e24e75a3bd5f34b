import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect } from 'vitest';
import { QsdBackend, type QsdBackendOptions } from '../../src/backend/qsd/index.js';
import type { ObservedImage } from '../../src/backend/types.js';
import { frontEndAsync } from './vhost-front-end.js';

/**
 * "Nodes" that are real qemu-storage-daemons managed by the qsd driver, one per name under a
 * temporary directory per test, closed and removed after each test: the rig of the qsd
 * distribution, lazy-golden and NBD TLS suites.
 */

export const MiB = 1024 * 1024;
export const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
/** One sha256 per MiB: what `readAll` returns for a disk with these bytes. */
export const mibSums = (b: Buffer): string[] => Array.from({ length: b.length / MiB }, (_, i) => sha(b.subarray(i * MiB, (i + 1) * MiB)));

const available = (cmd: string, args: string[]): boolean => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;

/** The daemon, qemu-img, qemu-io when asked for, and a python3 able to be a vhost-user front end. */
export function qsdCanRun(opts: { qemuIo?: boolean } = {}): boolean {
  return (
    available('qemu-storage-daemon', ['--version']) &&
    available('qemu-img', ['--version']) &&
    (!opts.qemuIo || available('qemu-io', ['--version'])) &&
    available('python3', ['-c', 'import os, socket; os.eventfd; os.memfd_create; socket.send_fds'])
  );
}

export interface QsdNodes {
  /** This test's temporary directory. */
  readonly dir: string;
  /** A started node `<dir>/<name>` (driver defaults of the suite, then `extra`). */
  node(name: string, extra?: Partial<QsdBackendOptions>): Promise<QsdBackend>;
  /** A backend the test made itself, closed after the test like the nodes. */
  track(b: QsdBackend): QsdBackend;
}

/** Registers the per-test directory and the closing of every node made; call at module level. */
export function useQsdNodes(prefix: string, defaults: Partial<QsdBackendOptions> = {}): QsdNodes {
  let dir: string | undefined;
  const backends: QsdBackend[] = [];
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  });
  afterEach(async () => {
    for (const b of backends.splice(0)) await b.close();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
    dir = undefined;
  });
  const current = (): string => {
    if (dir === undefined) throw new Error('no test is running');
    return dir;
  };
  return {
    get dir(): string {
      return current();
    },
    node: async (name, extra = {}) => {
      const base = current();
      const b = new QsdBackend({ stateDir: path.join(base, name, 's'), vhostDir: path.join(base, name, 'v'), managed: true, restartDelayMs: 50, hydrationRetryMs: 100, ...defaults, ...extra });
      backends.push(b);
      await b.start();
      return b;
    },
    track: (b) => {
      backends.push(b);
      return b;
    },
  };
}

export const imageOf = async (b: QsdBackend, name: string): Promise<ObservedImage | undefined> => (await b.observe()).images.find((i) => i.name === name);

/** Polls `fn` every 100 ms until it gives something (not undefined or false). */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 90_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Reads the disk behind a vhost-user-blk socket, one sha256 per MiB, as a guest would. */
export async function readAll(socketPath: string, bytes: number): Promise<string[]> {
  const res = await frontEndAsync(socketPath, Array.from({ length: bytes / MiB }, (_, i) => ({ op: 'read' as const, sector: (i * MiB) / 512, len: MiB })));
  expect(res.results.every((r) => r.status === 0)).toBe(true);
  return res.results.map((r) => r.sha256 ?? '');
}
