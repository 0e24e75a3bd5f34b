/**
 * One run of the guest-across-a-restart scenario on a real spdk_tgt, shared by
 * test/spdk/guest.test.ts (which asserts the data) and bench/spdk-real.bench.ts (which reports
 * the pause): the agent (a real process) serves a blank disk, a QEMU guest (TCG) writes
 * O_DIRECT records through vhost-user-blk, spdk_tgt is SIGKILLed and restarted under it, the
 * guest writes on, stops and verifies every record.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { standaloneAgentArgs } from '../helpers/agent.js';
import { ensureGuestBuilt, guestCmdline, GuestConsole } from '../helpers/guest.js';
import { exited, hasCommand, killAll, startCli, until, vmiYaml } from '../helpers/process.js';
import { RealTarget, shortTempDir } from './target.js';

/** Why the guest scenario cannot run here, or undefined. */
export function whyNoGuest(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (QEMU opens hugepages and the root-owned vhost socket)';
  if (!hasCommand('qemu-system-x86_64')) return 'qemu-system-x86_64 is not installed';
  const info = existsSync('/proc/meminfo') ? readFileSync('/proc/meminfo', 'utf8') : '';
  const freeMiB = (Number(/HugePages_Free:\s+(\d+)/.exec(info)?.[1] ?? 0) * Number(/Hugepagesize:\s+(\d+) kB/.exec(info)?.[1] ?? 0)) / 1024;
  if (freeMiB < 1024) return `needs 1024 MiB of free hugepages (spdk_tgt 512 + guest 256 + margin), ${freeMiB} free`;
  return undefined;
}

export interface GuestRestartResult {
  version: string;
  /** The guest's `VERIFY` line: `OK <records>` when every record read back. */
  verify: string;
  records: number;
  /** Longest gap between two consecutive records on the guest's console, ms. */
  pauseMs: number;
  /** From SIGKILL to the new spdk_tgt answering, ms. */
  restartMs: number;
  /** The agent's `recovery` event duration, ms (undefined if none was logged). */
  agentRecoveryMs: number | undefined;
  agentExit: number | null;
  transcript: string;
}

export async function guestAcrossRestart(bin: string): Promise<GuestRestartResult> {
  const guest = await ensureGuestBuilt();
  const dir = await shortTempDir('kg-');
  const procs: ChildProcess[] = [];
  // Guest memory for vhost-user must be hugepage-backed: spdk_tgt runs on hugepages too.
  const tgt = new RealTarget(bin, path.join(dir, 'rpc.sock'), path.join(dir, 'vh'), ['-s', '512']);
  try {
    await tgt.start();
    await mkdir(path.join(dir, 'vmis'));
    await writeFile(path.join(dir, 'images.yaml'), '');
    await writeFile(path.join(dir, 'vmis', 'g.yaml'), vmiYaml('g', 'slot-00', '- name: data\n  spdkVhostBlkDisk: {blank: {}, capacity: 64Mi}'));
    const agent = startCli(
      standaloneAgentArgs('spdk', { dir, spdkSocket: tgt.socketPath, vhostDir: tgt.vhostDir }, '--lvstore-size', '1Gi', '--socket-owner', '0:0', '--resync', '60s'),
      procs,
    );
    const sock = path.join(tgt.vhostDir, 'slot-00', 'data');
    await until('vhost socket', () => existsSync(sock), 60_000);

    const consoleSock = path.join(dir, 'console.sock');
    const qemu = spawn(
      'qemu-system-x86_64',
      [
        '-accel', 'tcg', '-m', '256', '-object', 'memory-backend-file,id=mem,size=256M,mem-path=/dev/hugepages,share=on', '-numa', 'node,memdev=mem',
        '-kernel', guest.kernel, '-initrd', guest.initrd, '-append', guestCmdline({ mode: 'e2e', seq: 0, tag: 'spdk', disk: 'vda' }),
        '-chardev', `socket,id=c0,path=${sock},reconnect=1`, '-device', 'vhost-user-blk-pci,chardev=c0,num-queues=1',
        '-serial', `unix:${consoleSock},server=on,wait=off`, '-display', 'none', '-nodefaults', '-no-reboot',
      ],
      { stdio: ['ignore', 'ignore', 'ignore'] },
    );
    procs.push(qemu);

    // Timestamps of the guest's records, taken as the console prints them.
    const seqAt: number[] = [];
    const socket = await until('guest console', () =>
      new Promise<net.Socket | undefined>((resolve) => {
        const s = net.createConnection(consoleSock);
        s.once('connect', () => resolve(s));
        s.once('error', () => resolve(undefined));
      }),
    );
    let partial = '';
    socket.on('data', (chunk: Buffer | string) => {
      const lines = (partial + chunk.toString()).split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) if (/^KS: SEQ \d+/.test(l.trim())) seqAt.push(Date.now());
    });
    const con = new GuestConsole(socket);
    await con.waitFor('MARKER', 120_000);
    await con.waitFor('SEQ', 60_000, (r) => r === '20');

    const killedAt = Date.now();
    await tgt.restart('SIGKILL');
    const restartMs = Date.now() - killedAt;
    const before = seqAt.length;
    await until('guest writing again', () => seqAt.length >= before + 20, 120_000);
    await con.stopWriting();
    const verify = await con.waitFor('VERIFY', 120_000);

    let pauseMs = 0;
    for (let i = 1; i < seqAt.length; i++) pauseMs = Math.max(pauseMs, (seqAt[i] ?? 0) - (seqAt[i - 1] ?? 0));
    const recovery = agent.out
      .join('')
      .split('\n')
      .find((l) => l.includes('"event":"recovery"'));
    agent.kill('SIGTERM');
    const agentExit = await exited(agent);
    await until('guest powered off', () => qemu.exitCode !== null || qemu.signalCode !== null, 60_000).catch(() => qemu.kill('SIGKILL'));
    return {
      version: tgt.version,
      verify: verify.rest,
      records: Number(/^OK (\d+)$/.exec(verify.rest)?.[1] ?? 0),
      pauseMs,
      restartMs,
      agentRecoveryMs: recovery ? (JSON.parse(recovery) as { durationMs: number }).durationMs : undefined,
      agentExit,
      transcript: con.transcript(),
    };
  } finally {
    await killAll(procs);
    await tgt.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
}
