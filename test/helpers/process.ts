/** Real processes in integration tests: start the CLI, wait for conditions, probe sockets. */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { cliArgv, simArgv } from './cli.js';

export type CliProcess = ChildProcess & { out: string[] };

/** Starts `kubevirt-spdk ...args` from source; its stdout+stderr collect in `out`. */
export function startCli(args: string[], procs: ChildProcess[]): CliProcess {
  return startArgv(cliArgv(...args), procs);
}

/** Starts the SPDK simulator (testing/spdk-sim/main.ts) with `args` from source; its stdout+stderr collect in `out`. */
export function startSimProcess(args: string[], procs: ChildProcess[]): CliProcess {
  return startArgv(simArgv(...args), procs);
}

function startArgv({ command, args: argv }: { command: string; args: string[] }, procs: ChildProcess[]): CliProcess {
  const p = spawn(command, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LOG_LEVEL: 'info' } }) as CliProcess;
  p.out = [];
  p.stdout?.on('data', (b: Buffer) => p.out.push(b.toString()));
  p.stderr?.on('data', (b: Buffer) => p.out.push(b.toString()));
  procs.push(p);
  return p;
}

export const exited = (p: ChildProcess): Promise<number | null> =>
  p.exitCode !== null || p.signalCode !== null ? Promise.resolve(p.exitCode) : new Promise((resolve) => p.once('exit', (code) => resolve(code)));

/** The exit code, or 'still running' after `ms`: a bound so that a process that never exits fails the test instead of hanging it. */
export function exitedWithin(p: ChildProcess, ms: number): Promise<number | null | 'still running'> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<'still running'>((resolve) => (timer = setTimeout(() => resolve('still running'), ms)));
  return Promise.race([exited(p), bound]).finally(() => clearTimeout(timer));
}

/** SIGKILLs what is still running (afterEach). */
export async function killAll(procs: ChildProcess[]): Promise<void> {
  for (const p of procs.splice(0)) {
    if (p.exitCode === null && p.signalCode === null) {
      p.kill('SIGKILL');
      await exited(p);
    }
  }
}

/** Polls `fn` (sync or async) until it gives a value other than undefined/false, bounded; a throw counts as "not yet". */
export async function until<T>(
  what: string,
  fn: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 30_000,
  pollMs = 100,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await Promise.resolve()
      .then(fn)
      .catch(() => undefined);
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

/** True when `name` is an executable on PATH: tests that need a binary skip without it. */
export function hasCommand(name: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => {
    try {
      accessSync(path.join(dir, name), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

export const connectable = (p: string): Promise<boolean> =>
  new Promise((resolve) => {
    const s = net.connect(p);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

/** A standalone VMI file: the slot annotation and the volumes annotation (YAML list text). */
export const vmiYaml = (name: string, slot: string, volumes: string): string => `apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: ${name}
  annotations:
    kubevirt-spdk.io/slot: ${slot}
    kubevirt-spdk.io/volumes: |
${volumes
  .trim()
  .split('\n')
  .map((l) => `      ${l}`)
  .join('\n')}
`;
