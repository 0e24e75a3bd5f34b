import type { ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, truncate, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeStatusSchema } from '../../src/agent/node-status.js';
import { killAgentQsd, SOCKET_OWNER as OWNER, SOCKET_OWNER_ARG, standaloneAgentArgs } from '../helpers/agent.js';
import { connectable, exited, hasCommand, killAll, startCli, until, vmiYaml } from '../helpers/process.js';

/**
 * The standalone agent as a real process on the qsd backend: it supervises a real
 * qemu-storage-daemon, serves thin qcow2 clones of the cached image as vhost-user-blk sockets,
 * and brings them back when the daemon dies.
 */
// Needs Debian's qemu-system-common and qemu-utils (make deps installs them).
const missing = !hasCommand('qemu-storage-daemon') || !hasCommand('qemu-img');

let dir: string;
const procs: ChildProcess[] = [];

const agentArgs = (): string[] => standaloneAgentArgs('qsd', { dir }, '--socket-owner', SOCKET_OWNER_ARG, '--orphan-grace', '0s', '--resync', '2s');
const slotReady = async (s: string): Promise<true | undefined> =>
  (JSON.parse(await readFile(path.join(dir, 'st', 'slots', `${s}.json`), 'utf8')) as { ready: boolean }).ready || undefined;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'aq-'));
  await mkdir(path.join(dir, 'vmis'));
  const image = path.join(dir, 'base.raw');
  await writeFile(image, 'GOLDEN\n');
  await truncate(image, 16 * 2 ** 20);
  await writeFile(
    path.join(dir, 'images.yaml'),
    `apiVersion: kubevirt-spdk.io/v1alpha1\nkind: CachedImage\nmetadata: {name: base}\nspec:\n  source: {hostPath: {path: ${image}}}\n`,
  );
  await writeFile(path.join(dir, 'vmis', 'a.yaml'), vmiYaml('a', 'slot-01', '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 64Mi}\n- name: data\n  spdkVhostBlkDisk: {blank: {}, capacity: 32Mi}'));
  await writeFile(path.join(dir, 'vmis', 'b.yaml'), vmiYaml('b', 'slot-02', '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 64Mi, readonly: true}'));
});

afterEach(async () => {
  await killAll(procs);
  await killAgentQsd(path.join(dir, 'st'));
  await rm(dir, { recursive: true, force: true });
});

const SOCKETS = ['slot-01/root', 'slot-01/data', 'slot-02/root'];

describe.skipIf(missing)('agent --standalone --backend qsd (real qemu-storage-daemon)', () => {
  it('serves clones at the contracted paths and modes, recovers when the daemon dies, and cleans up a removed VMI', async () => {
    const agent = startCli(agentArgs(), procs);
    await until('slot-01 ready', () => slotReady('slot-01'));
    await until('slot-02 ready', () => slotReady('slot-02'));
    for (const s of SOCKETS) {
      const st = await stat(path.join(dir, 'vh', s));
      expect(st.isSocket()).toBe(true);
      expect([st.uid, st.gid, st.mode & 0o777]).toEqual([OWNER.uid, OWNER.gid, 0o660]);
      expect(await connectable(path.join(dir, 'vh', s))).toBe(true);
    }
    // The cached golden image is read-only; each image disk is a thin qcow2 clone backed by it.
    const golden = path.join(dir, 'st', 'qsd', 'images', 'base.raw');
    expect((await stat(golden)).mode & 0o222).toBe(0);
    const overlays = (await readdir(path.join(dir, 'st', 'qsd', 'disks'))).filter((f) => f.endsWith('.qcow2'));
    expect(overlays).toHaveLength(3);
    const info = JSON.parse(
      execFileSync('qemu-img', ['info', '-U', '--output=json', path.join(dir, 'st', 'qsd', 'disks', overlays.find((f) => f.includes('root'))!)], { encoding: 'utf8' }),
    ) as { 'backing-filename'?: string; 'virtual-size': number };
    expect(info['backing-filename']).toBe(golden);
    expect(info['virtual-size']).toBe(64 * 2 ** 20);

    // Live recovery: the daemon dies; the agent restarts it and recreates every export.
    const pid = Number((await readFile(path.join(dir, 'st', 'qsd', 'qsd.pid'), 'utf8')).trim());
    process.kill(pid, 'SIGKILL');
    await until('recovery logged', async () => (agent.out.join('').includes('"event":"recovery"') ? true : undefined));
    for (const s of SOCKETS) await until(`${s} back`, async () => ((await connectable(path.join(dir, 'vh', s))) ? true : undefined));
    const newPid = Number((await readFile(path.join(dir, 'st', 'qsd', 'qsd.pid'), 'utf8')).trim());
    expect(newPid).not.toBe(pid);
    const st = await stat(path.join(dir, 'vh', 'slot-02/root'));
    expect([st.uid, st.gid, st.mode & 0o777]).toEqual([OWNER.uid, OWNER.gid, 0o660]);

    // Removing a VMI removes its controller and its clone; the image stays cached.
    await unlink(path.join(dir, 'vmis', 'b.yaml'));
    const status = await until('b cleaned up', async () => {
      const s = NodeStatusSchema.parse(JSON.parse(await readFile(path.join(dir, 'st', 'status.json'), 'utf8')));
      return s.controllers.length === 2 && s.disks.length === 2 ? s : undefined;
    });
    expect(status.controllers.map((c) => c.name).sort()).toEqual(['slot-01/data', 'slot-01/root']);
    await expect(stat(path.join(dir, 'vh', 'slot-02/root'))).rejects.toThrow();
    expect((await readdir(path.join(dir, 'st', 'qsd', 'disks'))).filter((f) => f.endsWith('.qcow2'))).toHaveLength(2);
    await stat(golden);

    agent.kill('SIGTERM');
    expect(await exited(agent)).toBe(0);
  }, 90_000);
});
