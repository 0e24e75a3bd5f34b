/** The standalone agent as a real process in tests: its arguments, the simulator it talks to, and what its qsd backend leaves running. */
import type { ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { connectable, startSimProcess, until, type CliProcess } from './process.js';

/** Who the agent hands the vhost sockets to: QEMU's uid/gid 107 as root; otherwise the test can only chown to itself. */
export const SOCKET_OWNER = process.getuid?.() === 0 ? { uid: 107, gid: 107 } : { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
/** SOCKET_OWNER as `--socket-owner` takes it. */
export const SOCKET_OWNER_ARG = `${SOCKET_OWNER.uid}:${SOCKET_OWNER.gid}`;

export interface AgentLayout {
  /** The test's directory: vmis/, images.yaml, st/, vh/ and spdk.sock are under it unless named below. */
  dir: string;
  vmis?: string;
  stateDir?: string;
  vhostDir?: string;
  /** spdk backend only. */
  spdkSocket?: string;
}

/** `agent --standalone --backend <backend>` on the files of `layout`, then `more` (e.g. `--lvstore-size`, `--socket-owner`). */
export function standaloneAgentArgs(backend: 'spdk' | 'qsd', layout: AgentLayout, ...more: string[]): string[] {
  const { dir } = layout;
  return [
    'agent', '--standalone', '--backend', backend,
    '--vmis', layout.vmis ?? path.join(dir, 'vmis'), '--images', path.join(dir, 'images.yaml'),
    ...(backend === 'spdk' ? ['--spdk-socket', layout.spdkSocket ?? path.join(dir, 'spdk.sock')] : []),
    '--vhost-dir', layout.vhostDir ?? path.join(dir, 'vh'), '--state-dir', layout.stateDir ?? path.join(dir, 'st'),
    ...more,
  ];
}

/** The simulator (testing/spdk-sim/main.ts) serving `dir`/spdk.sock and `dir`/vh (state in `dir`/sim); resolves once the socket accepts. */
export async function startSpdkSim(dir: string, procs: ChildProcess[]): Promise<CliProcess> {
  const sim = startSimProcess(['--socket', path.join(dir, 'spdk.sock'), '--vhost-dir', path.join(dir, 'vh'), '--state-dir', path.join(dir, 'sim')], procs);
  await until('simulator socket', async () => ((await connectable(path.join(dir, 'spdk.sock'))) ? true : undefined));
  return sim;
}

/** SIGKILLs the qemu-storage-daemon of the agent's qsd backend (pid file under `stateDir`): it outlives a killed agent by design (VMs keep their disks). */
export async function killAgentQsd(stateDir: string): Promise<void> {
  const pid = Number((await readFile(path.join(stateDir, 'qsd', 'qsd.pid'), 'utf8').catch(() => '')).trim());
  if (Number.isInteger(pid) && pid > 1) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}
