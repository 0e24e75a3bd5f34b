import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import path from 'node:path';

/**
 * One agent per state directory: two agents with different views of the node would each
 * delete what the other made. The lock is a kernel flock(2) on `<stateDir>/agent.lock`,
 * held by a small `flock(1)` child (Node has no flock) whose command waits on a pipe from
 * the agent. However the agent ends (SIGKILL included) the pipe closes, the child exits and
 * the kernel drops the lock: a crashed agent never leaves it stuck, and there is no pid in a
 * file to go stale or be reused. flock works across containers that share the directory.
 */

export const LOCK_FILE = 'agent.lock';
/** flock(1)'s exit code when the lock is taken (--conflict-exit-code). */
const CONFLICT = 75;

export class StateDirLockedError extends Error {
  override readonly name = 'StateDirLockedError';
  constructor(readonly stateDir: string) {
    super(`state dir ${stateDir} is in use by another agent (one agent per state dir): stop that agent first`);
  }
}

export interface StateDirLock {
  readonly file: string;
  /** Called if the lock is lost while held (its holder was killed): the agent must stop. */
  onLost(fn: (reason: string) => void): void;
  release(): Promise<void>;
}

export async function lockStateDir(stateDir: string, flockBinary = 'flock'): Promise<StateDirLock> {
  const file = path.join(path.resolve(stateDir), LOCK_FILE);
  // The command says "locked" once flock holds the lock, then waits for the agent's pipe to close.
  const child: ChildProcess = spawn(flockBinary, ['--nonblock', '--conflict-exit-code', String(CONFLICT), file, 'sh', '-c', 'echo locked; exec cat >/dev/null'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const acquired = new Promise<void>((resolve, reject) => {
    child.stdout?.setEncoding('utf8').once('data', () => resolve());
    child.once('error', (err) => reject(new Error(`cannot run ${flockBinary} to lock ${file}: ${err.message}`)));
    child.once('exit', (code) => {
      if (code === CONFLICT) reject(new StateDirLockedError(path.resolve(stateDir)));
      else reject(new Error(`cannot lock ${file}: ${flockBinary} exited ${code}: ${stderr.trim()}`));
    });
  });
  await acquired;
  let released = false;
  let lost: ((reason: string) => void) | undefined;
  child.once('exit', (code, sig) => {
    if (!released) lost?.(`the holder of ${file} exited (${sig ?? code})`);
  });
  // The lock lives as long as the agent, but must not keep an agent that is done alive.
  child.unref();
  for (const s of [child.stdin, child.stdout, child.stderr]) (s as Socket | null)?.unref();
  return {
    file,
    onLost: (fn) => {
      lost = fn;
    },
    release: async () => {
      if (released) return;
      released = true;
      const exit = child.exitCode === null && child.signalCode === null ? once(child, 'exit') : Promise.resolve();
      // Waited for with the loop held open: an unref'd child alone would let the process end first.
      child.ref();
      (child.stdin as Socket | null)?.ref();
      child.stdin?.end();
      await exit;
    },
  };
}
