/**
 * A guest (QEMU, TCG) writing O_DIRECT records through a vhost-user-blk disk served by a real
 * spdk_tgt that the agent provisioned; spdk_tgt is SIGKILLed and restarted under the running
 * I/O. The agent re-creates the controller, QEMU reconnects, and the guest must read back every
 * record it wrote. The guest's I/O pause across the restart is printed (measured from the
 * console; not asserted: speed belongs in bench/). Opt-in: SPDK_TGT; needs root, QEMU, the
 * test guest (hack/guest) and hugepages (vhost-user guest memory must be hugepage-backed for
 * SPDK).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ensureGuestBuilt, guestCmdline, GuestConsole } from '../helpers/guest.js';
import { exited, hasCommand, killAll, startCli, until, vmiYaml } from '../helpers/process.js';
import { cases, RealTarget, realSpdkOrSkip, shortTempDir } from './target.js';

const targets = realSpdkOrSkip('test/spdk/guest.test.ts');

function whyNot(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (QEMU opens hugepages and the root-owned vhost socket)';
  if (!hasCommand('qemu-system-x86_64')) return 'qemu-system-x86_64 is not installed';
  const info = existsSync('/proc/meminfo') ? readFileSync('/proc/meminfo', 'utf8') : '';
  const freeMiB = (Number(/HugePages_Free:\s+(\d+)/.exec(info)?.[1] ?? 0) * Number(/Hugepagesize:\s+(\d+) kB/.exec(info)?.[1] ?? 0)) / 1024;
  if (freeMiB < 1024) return `needs 1024 MiB of free hugepages (spdk_tgt 512 + guest 256 + margin), ${freeMiB} free`;
  return undefined;
}
const skip = targets.length === 0 ? 'SPDK_TGT is not set' : whyNot();
if (targets.length > 0 && skip) process.stdout.write(`[test/spdk/guest.test.ts] skipped: ${skip}\n`);

const procs: ChildProcess[] = [];
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  await killAll(procs);
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

describe.skipIf(skip !== undefined).each(cases(targets))('a guest across an spdk_tgt restart ($label)', ({ bin }) => {
  it('keeps every acknowledged write; the agent brings the controller back under the running guest', async () => {
    const guest = await ensureGuestBuilt();
    const dir = await shortTempDir('kg-');
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    // Guest memory for vhost-user must be hugepage-backed: spdk_tgt runs on hugepages too.
    const tgt = new RealTarget(bin, path.join(dir, 'rpc.sock'), path.join(dir, 'vh'), ['-s', '512']);
    await tgt.start();
    cleanups.push(() => tgt.kill('SIGKILL'));
    await mkdir(path.join(dir, 'vmis'));
    await writeFile(path.join(dir, 'images.yaml'), '');
    await writeFile(path.join(dir, 'vmis', 'g.yaml'), vmiYaml('g', 'slot-00', '- name: data\n  spdkVhostBlkDisk: {blank: {}, capacity: 64Mi}'));
    const agent = startCli(
      ['agent', '--standalone', '--backend', 'spdk', '--vmis', path.join(dir, 'vmis'), '--images', path.join(dir, 'images.yaml'), '--spdk-socket', tgt.socketPath,
        '--vhost-dir', tgt.vhostDir, '--state-dir', path.join(dir, 'st'), '--lvstore-size', '1Gi', '--socket-owner', '0:0', '--resync', '60s'],
      procs,
    );
    const sock = path.join(tgt.vhostDir, 'slot-00', 'data');
    await until('vhost socket', () => existsSync(sock), 60_000);

    const consoleSock = path.join(dir, 'console.sock');
    const qemu = spawn(
      'qemu-system-x86_64',
      ['-accel', 'tcg', '-m', '256', '-object', `memory-backend-file,id=mem,size=256M,mem-path=/dev/hugepages,share=on`, '-numa', 'node,memdev=mem',
        '-kernel', guest.kernel, '-initrd', guest.initrd, '-append', guestCmdline({ mode: 'e2e', seq: 0, tag: 'spdk', disk: 'vda' }),
        '-chardev', `socket,id=c0,path=${sock},reconnect=1`, '-device', 'vhost-user-blk-pci,chardev=c0,num-queues=1',
        '-serial', `unix:${consoleSock},server=on,wait=off`, '-display', 'none', '-nodefaults', '-no-reboot'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    procs.push(qemu);
    const qemuOut: string[] = [];
    qemu.stderr?.on('data', (b: Buffer) => qemuOut.push(b.toString()));

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
    const answeredAt = Date.now();
    const before = seqAt.length;
    await until('guest writing again', () => seqAt.length >= before + 20, 120_000);
    con.send('stop');
    const verify = await con.waitFor('VERIFY', 120_000);
    expect(verify.rest, con.transcript().slice(-2000)).toMatch(/^OK \d+$/);

    let pause = 0;
    for (let i = 1; i < seqAt.length; i++) pause = Math.max(pause, (seqAt[i] ?? 0) - (seqAt[i - 1] ?? 0));
    const recovery = agent.out
      .join('')
      .split('\n')
      .find((l) => l.includes('"event":"recovery"'));
    process.stdout.write(
      `[guest ${tgt.version}] records=${verify.rest} pause=${pause} ms (kill to new socket answering ${answeredAt - killedAt} ms; agent ${recovery ? JSON.parse(recovery).durationMs : '?'} ms; QEMU reconnect=1)\n`,
    );
    agent.kill('SIGTERM');
    expect(await exited(agent)).toBe(0);
    await until('guest powered off', () => qemu.exitCode !== null || qemu.signalCode !== null, 60_000).catch(() => qemu.kill('SIGKILL'));
  });
});
