import type { ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { NodeStatusSchema, type NodeStatus } from '../../src/agent/node-status.js';
import { SpdkRpcClient } from '../../src/spdk/client.js';
import { killAgentQsd, SOCKET_OWNER_ARG, startSpdkSim, standaloneAgentArgs } from '../helpers/agent.js';
import { connectable, exited, hasCommand, killAll, startCli, until, vmiYaml, type CliProcess } from '../helpers/process.js';
import { Tally, rng, runSeed, scale } from './seed.js';

/**
 * Fault injection with real processes: the agent (`kubevirt-spdk agent --standalone`) and its
 * storage server, either spdk_tgt (the simulator as its own process, testing/spdk-sim/main.ts)
 * or the managed qemu-storage-daemon, killed with SIGKILL at random points of provisioning and
 * recovery and brought back after a random delay. The node must then converge, judged only
 * from the outside: the server's RPC listings, the agent's state files, the sockets and, for
 * qsd, the content hash of the cached golden image and `qemu-img check` of every clone.
 * FAULT_SEED replays a run, FAULT_SCALE lengthens it (`make faults`).
 */
const SEED = runSeed();
const SCALE = scale();
const MAX_DELAY_MS = Number(process.env.FAULT_MAX_DELAY_MS ?? '20') * 10;
const tally = new Tally();
console.log(`[faults] process suite seed=${SEED} (replay with FAULT_SEED=${SEED}) scale=${SCALE}`);

const SOCKETS = ['slot-01/root', 'slot-01/data', 'slot-02/root'];
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let dir: string;
const procs: ChildProcess[] = [];

afterEach(async () => {
  await killAll(procs);
  await killAgentQsd(path.join(dir, 'st'));
  await rm(dir, { recursive: true, force: true });
});
afterAll(() => {
  console.log(tally.line('process', SEED));
});

async function node(prefix: string): Promise<void> {
  dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  await mkdir(path.join(dir, 'vmis'));
  await mkdir(path.join(dir, 'vh'));
  const image = path.join(dir, 'base.raw');
  await writeFile(image, 'GOLDEN\n');
  await truncate(image, 16 * 2 ** 20);
  await writeFile(path.join(dir, 'images.yaml'), `apiVersion: kubevirt-spdk.io/v1alpha1\nkind: CachedImage\nmetadata: {name: base}\nspec:\n  source: {hostPath: {path: ${image}}}\n`);
  await writeFile(path.join(dir, 'vmis', 'a.yaml'), vmiYaml('a', 'slot-01', '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 64Mi}\n- name: data\n  spdkVhostBlkDisk: {blank: {}, capacity: 32Mi}'));
  await writeFile(path.join(dir, 'vmis', 'b.yaml'), vmiYaml('b', 'slot-02', '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 64Mi}'));
}

const agentArgs = (backend: 'spdk' | 'qsd'): string[] =>
  standaloneAgentArgs(backend, { dir }, '--socket-owner', SOCKET_OWNER_ARG, '--orphan-grace', '0s', '--resync', '1s', ...(backend === 'spdk' ? ['--lvstore-size', '1Gi'] : []));
const startSim = (): Promise<ChildProcess> => startSpdkSim(dir, procs);

async function status(): Promise<NodeStatus> {
  return NodeStatusSchema.parse(JSON.parse(await readFile(path.join(dir, 'st', 'status.json'), 'utf8')));
}

/** `until`, and on time-out the agent's last status and log lines, to see why. */
async function untilOr<T>(agent: CliProcess | undefined, what: string, fn: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  try {
    return await until(what, fn, timeoutMs);
  } catch (e) {
    const st = await readFile(path.join(dir, 'st', 'status.json'), 'utf8').catch(() => '(no status.json)');
    const log = (agent?.out.join('') ?? '').split('\n').slice(-30).join('\n');
    throw new Error(`${(e as Error).message}\nagent exit: ${String(agent?.exitCode)} ${String(agent?.signalCode)}\nstatus.json: ${st}\nagent log (last lines):\n${log}`);
  }
}

/** Converged as the agent itself reports it, and every socket answers. */
async function converged(agent?: CliProcess): Promise<NodeStatus> {
  return untilOr(agent,
    'node converged',
    async () => {
      const s = await status();
      const ready = s.backend.ok && s.reconcile.converged && s.vmis.length === 2 && s.vmis.every((v) => v.disks.every((d) => d.phase === 'Ready'));
      if (!ready) return undefined;
      for (const sock of SOCKETS) if (!(await connectable(path.join(dir, 'vh', sock)))) return undefined;
      return s;
    },
    45_000,
  );
}

interface Lvol { name: string; uuid: string; alias: string; is_snapshot: boolean; is_clone: boolean }
interface Ctrlr { ctrlr: string; backend_specific?: { block?: { bdev?: string } } }
interface Bdev { name: string; product_name?: string; aliases?: string[] }

/** The invariants, from spdk_tgt's own listings (not the agent's word). */
async function spdkInvariants(what: string): Promise<void> {
  const client = new SpdkRpcClient({ socketPath: path.join(dir, 'spdk.sock'), timeoutMs: 5_000 });
  try {
    const ctrlrs = (await client.call('vhost_get_controllers')) as Ctrlr[];
    const lvols = (await client.call('bdev_lvol_get_lvols')) as Lvol[];
    const bdevs = (await client.call('bdev_get_bdevs')) as Bdev[];
    expect(ctrlrs.map((c) => c.ctrlr).sort(), `${what}: exactly the desired controllers`).toEqual([...SOCKETS].sort());
    tally.held('controllers-exact');
    const served = ctrlrs.map((c) => c.backend_specific?.block?.bdev ?? '');
    expect(new Set(served).size, `${what}: one controller per bdev`).toBe(served.length);
    tally.held('one-controller-per-bdev');
    const byId = new Map(lvols.flatMap((l) => [[l.uuid, l], [l.alias, l]] as const));
    expect(served.filter((b) => !byId.has(b)), `${what}: controllers serve lvols`).toEqual([]);
    // 3 disks + the golden (+ its fan-outs, snapshots the disks may be cloned from); an
    // interrupted import or a rolled back clone leaves nothing behind.
    const fanouts = lvols.filter((l) => /^img-base\.f\d+$/.test(l.name));
    expect(fanouts.every((l) => l.is_snapshot), `${what}: fan-outs are snapshots`).toBe(true);
    const golden = lvols.filter((l) => l.name.startsWith('img-') && !fanouts.includes(l));
    expect(golden.map((l) => l.name), `${what}: one golden`).toEqual(['img-base']);
    expect(golden[0]?.is_snapshot, `${what}: the golden is a snapshot`).toBe(true);
    expect(lvols.length - fanouts.length, `${what}: no leaked lvols: ${lvols.map((l) => l.name).join(',')}`).toBe(4);
    tally.held('no-leaked-lvol');
    const aio = bdevs.filter((b) => b.product_name === 'AIO disk');
    expect(aio.length, `${what}: no leftover aio bdevs of an import: ${aio.map((b) => b.name).join(',')}`).toBeLessThanOrEqual(1);
    tally.held('no-import-leftover');
  } finally {
    await client.close();
  }
}

describe('spdk_tgt (simulator process) SIGKILLed during provisioning and recovery, agent a real process', () => {
  it('converges after every kill, with exactly the desired controllers and lvols', async () => {
    await node('fp-');
    const rand = rng(SEED ^ 0x5bd1);
    let sim = await startSim();
    const agent = startCli(agentArgs('spdk'), procs);
    const rounds = Math.ceil(3 * SCALE);
    for (let i = 0; i < rounds; i++) {
      // First round: mid-provisioning (import, clones, controllers); later: mid-recovery.
      const after = rand.int(0, i === 0 ? 1_500 : 400);
      const down = rand.int(0, MAX_DELAY_MS);
      await sleep(after);
      sim.kill('SIGKILL');
      await exited(sim);
      tally.faults++;
      await sleep(down);
      sim = await startSim();
      const what = `round ${i}: SIGKILL ${after}ms in, down ${down}ms (seed ${SEED})`;
      if (rand.next() < 0.5 || i === rounds - 1) {
        await converged(agent);
        await spdkInvariants(what);
      }
      tally.scenarios++;
    }
    expect(agent.exitCode, 'the agent survives its server dying').toBeNull();
    agent.kill('SIGTERM');
    expect(await exited(agent)).toBe(0);
  }, 120_000);
});

describe('agent started while spdk_tgt is down, and spdk_tgt dying during the agent\'s start', () => {
  // Found by the test above: the agent exited silently (code 0) when its first connect failed
  // (only an unref'd reconnect timer was left), and exited 1 when the connection dropped during
  // framework_wait_init. Both are deterministic here.
  it('the agent waits for spdk_tgt instead of exiting, then converges', async () => {
    await node('fs-');
    const agent = startCli(agentArgs('spdk'), procs);
    // Nothing listens: the agent dials and fails for a while (bounded wait, no timing assertion).
    await sleep(2_500);
    expect(agent.exitCode, `agent exited while spdk_tgt was down: ${agent.out.join('')}`).toBeNull();
    // An spdk_tgt that dies right after accepting the agent's connection.
    const sock = path.join(dir, 'spdk.sock');
    let accepted!: () => void;
    const gotOne = new Promise<void>((res) => (accepted = res));
    const dying = net.createServer((c) => {
      c.destroy();
      accepted();
    });
    await new Promise<void>((res) => dying.listen(sock, () => res()));
    try {
      await Promise.race([gotOne, sleep(30_000).then(() => Promise.reject(new Error('the agent never connected')))]);
    } finally {
      await new Promise<void>((res) => dying.close(() => res()));
    }
    tally.faults += 2;
    await startSim();
    await converged(agent);
    await spdkInvariants('after a start without spdk_tgt');
    expect(agent.exitCode, 'the agent is still running').toBeNull();
    tally.scenarios++;
    agent.kill('SIGTERM');
    expect(await exited(agent)).toBe(0);
  }, 60_000);
});

const qsdMissing = !hasCommand('qemu-storage-daemon') || !hasCommand('qemu-img');

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

describe.skipIf(qsdMissing)('qemu-storage-daemon (managed by the agent) SIGKILLed during provisioning and recovery', () => {
  it('the golden keeps its content hash, clones pass qemu-img check, no leaked overlays or exports', async () => {
    await node('fq-');
    const rand = rng(SEED ^ 0x9e37);
    const agent = startCli(agentArgs('qsd'), procs);
    const pidFile = path.join(dir, 'st', 'qsd', 'qsd.pid');
    const golden = path.join(dir, 'st', 'qsd', 'images', 'base.raw');
    const source = await sha256(path.join(dir, 'base.raw'));
    const rounds = Math.ceil(3 * SCALE);
    let pid = 0;
    for (let i = 0; i < rounds; i++) {
      // A daemon that is up and is not the one already killed (the agent restarts it).
      const live = await until('qsd running', async () => {
        const p = Number((await readFile(pidFile, 'utf8')).trim());
        return p > 1 && p !== pid ? p : undefined;
      });
      const after = rand.int(0, i === 0 ? 300 : 400);
      await sleep(after);
      try {
        process.kill(live, 'SIGKILL');
        tally.faults++;
      } catch {
        // exited by itself in between: still a restart for the agent
      }
      pid = live;
      const what = `round ${i}: qsd SIGKILL ${after}ms in (seed ${SEED})`;
      if (rand.next() < 0.5 || i === rounds - 1) {
        const s = await converged(agent);
        expect(s.controllers.map((c) => c.name).sort(), what).toEqual([...SOCKETS].sort());
        tally.held('controllers-exact');
        expect(await sha256(golden), `${what}: golden content`).toBe(source);
        tally.held('golden-hash');
        const overlays = (await readdir(path.join(dir, 'st', 'qsd', 'disks'))).filter((f) => !f.startsWith('.'));
        expect(overlays.filter((f) => f.endsWith('.qcow2')), `${what}: one overlay per disk, nothing else: ${overlays.join(',')}`).toHaveLength(3);
        expect(overlays.filter((f) => !f.endsWith('.qcow2')), `${what}: no partial files`).toEqual([]);
        tally.held('no-leaked-overlay');
        for (const f of overlays) {
          // -U: the daemon holds the image open; check reads only.
          execFileSync('qemu-img', ['check', '-U', path.join(dir, 'st', 'qsd', 'disks', f)], { stdio: 'pipe' });
        }
        tally.held('clone-check');
        const socks = (await readdir(path.join(dir, 'vh'), { recursive: true })).filter((f) => f.includes('/'));
        expect(socks.sort(), `${what}: no leaked exports`).toEqual([...SOCKETS].sort());
        tally.held('no-leaked-export');
      }
      tally.scenarios++;
    }
    expect(agent.exitCode, 'the agent survives the daemon dying').toBeNull();
    agent.kill('SIGTERM');
    expect(await exited(agent)).toBe(0);
  }, 120_000);
});
