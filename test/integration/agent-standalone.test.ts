import type { ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, truncate, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeStatusSchema } from '../../src/agent/node-status.js';
import { SOCKET_OWNER as OWNER, SOCKET_OWNER_ARG, startSpdkSim, standaloneAgentArgs } from '../helpers/agent.js';
import { connectable, exited, killAll, startCli, until, vmiYaml, type CliProcess } from '../helpers/process.js';

/** The standalone agent as a real process against the SPDK simulator (a real process too). */

let dir: string;
const procs: ChildProcess[] = [];
const start = (args: string[]): CliProcess => startCli(args, procs);

const agentArgs = (...more: string[]): string[] =>
  standaloneAgentArgs('spdk', { dir }, '--lvstore-size', '8Gi', '--socket-owner', SOCKET_OWNER_ARG, '--orphan-grace', '0s', ...more);
const startSim = (): Promise<ChildProcess> => startSpdkSim(dir, procs);

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ai-'));
  await mkdir(path.join(dir, 'vmis'));
  await mkdir(path.join(dir, 'vh'));
  await truncate(await writeFile(path.join(dir, 'base.raw'), '').then(() => path.join(dir, 'base.raw')), 32 * 2 ** 20);
  await writeFile(
    path.join(dir, 'images.yaml'),
    `apiVersion: kubevirt-spdk.io/v1alpha1\nkind: CachedImage\nmetadata: {name: base}\nspec:\n  source: {hostPath: {path: ${path.join(dir, 'base.raw')}}}\n`,
  );
  await writeFile(path.join(dir, 'vmis', 'a.yaml'), vmiYaml('a', 'slot-01', '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 1Gi}\n- name: data\n  spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}'));
  await writeFile(path.join(dir, 'vmis', 'b.yaml'), vmiYaml('b', 'slot-02', '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 1Gi}'));
});

afterEach(async () => {
  await killAll(procs);
  await rm(dir, { recursive: true, force: true });
});

const SOCKETS = ['slot-01/root', 'slot-01/data', 'slot-02/root'];

describe('agent --standalone against the simulator', () => {
  it('serves connectable sockets with the contracted owner and mode, recovers after a simulator restart, and cleans up a removed VMI', async () => {
    let sim = await startSim();
    const agent = start(agentArgs('--resync', '2s'));
    const slot = async (s: string): Promise<boolean | undefined> =>
      (JSON.parse(await readFile(path.join(dir, 'st', 'slots', `${s}.json`), 'utf8')) as { ready: boolean }).ready || undefined;
    await until('slot-01 ready', () => slot('slot-01'));
    await until('slot-02 ready', () => slot('slot-02'));
    for (const s of SOCKETS) {
      const p = path.join(dir, 'vh', s);
      const st = await stat(p);
      expect(st.isSocket()).toBe(true);
      expect([st.uid, st.gid, st.mode & 0o777]).toEqual([OWNER.uid, OWNER.gid, 0o660]);
      expect(await connectable(p)).toBe(true);
    }

    // Kill the simulator hard; its sockets go with it. Restarted on the same state, the agent brings every controller back.
    sim.kill('SIGKILL');
    await exited(sim);
    for (const s of SOCKETS) await rm(path.join(dir, 'vh', s), { force: true });
    sim = await startSim();
    for (const s of SOCKETS) await until(`${s} back`, async () => ((await connectable(path.join(dir, 'vh', s))) ? true : undefined));
    await until('recovery logged', async () => (agent.out.join('').includes('"event":"recovery"') ? true : undefined));
    const st = await stat(path.join(dir, 'vh', 'slot-02/root'));
    expect([st.uid, st.gid, st.mode & 0o777]).toEqual([OWNER.uid, OWNER.gid, 0o660]);

    // Removing a VMI file removes its controllers and disks.
    await unlink(path.join(dir, 'vmis', 'b.yaml'));
    const status = await until('b cleaned up', async () => {
      const s = NodeStatusSchema.parse(JSON.parse(await readFile(path.join(dir, 'st', 'status.json'), 'utf8')));
      return s.controllers.length === 2 && s.disks.length === 2 && !s.vmis.some((v) => v.vmi.name === 'b') ? s : undefined;
    });
    expect(status.controllers.map((c) => c.name).sort()).toEqual(['slot-01/data', 'slot-01/root']);
    expect(status.images[0]?.cloneCount).toBe(1);
    await expect(stat(path.join(dir, 'vh', 'slot-02/root'))).rejects.toThrow();
    await expect(stat(path.join(dir, 'st', 'slots', 'slot-02.json'))).rejects.toThrow();

    agent.kill('SIGTERM');
    expect(await exited(agent)).toBe(0);
  }, 60_000);

  it('--once exits non-zero naming a bad VMI file and its field, while the good VMI is served', async () => {
    await startSim();
    await writeFile(path.join(dir, 'vmis', 'bad.yaml'), vmiYaml('bad', 'slot-03', '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 1Gi, queues: 999}'));
    const agent = start(agentArgs('--once', '--timeout', '30s'));
    expect(await exited(agent)).toBe(1);
    const out = agent.out.join('');
    expect(out).toMatch(/bad\.yaml\): .*\[0\]\.spdkVhostBlkDisk\.queues: must be <= 256/);
    for (const s of SOCKETS) expect(await connectable(path.join(dir, 'vh', s))).toBe(true);

    // Fixed file: --once now exits 0, and `status` shows what the node serves.
    await writeFile(path.join(dir, 'vmis', 'bad.yaml'), vmiYaml('bad', 'slot-03', '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 1Gi}'));
    const again = start(agentArgs('--once', '--timeout', '30s'));
    expect(await exited(again)).toBe(0);
    const status = start(['status', '--state-dir', path.join(dir, 'st')]);
    expect(await exited(status)).toBe(0);
    const text = status.out.join('');
    expect(text).toMatch(/base\s+ready\s+32Mi\s+3/);
    expect(text).toMatch(/default\/bad\s+slot-03\s+root\s+Ready/);
  }, 60_000);
});
