import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NodeStatusSchema } from '../../src/agent/node-status.js';
import { killAgentQsd, SOCKET_OWNER_ARG, standaloneAgentArgs } from '../helpers/agent.js';
import { connectable, exited, hasCommand, killAll, startCli, until, vmiYaml } from '../helpers/process.js';

/**
 * The standalone agent as a real process (qsd backend), attacked from its inputs and its
 * neighbours: a slow image source must not hold up other VMIs (F4), and a second agent on the
 * same state dir must not start (F6), while a SIGKILLed one leaves no stuck lock.
 */
const missing = !hasCommand('qemu-storage-daemon') || !hasCommand('qemu-img') || !hasCommand('flock');

let dir: string;
const procs: ChildProcess[] = [];
let server: http.Server | undefined;
const sockets = new Set<Socket>();

const agentArgs = (stateDir = 'st', vmis = 'vmis'): string[] =>
  standaloneAgentArgs('qsd', { dir, stateDir: path.join(dir, stateDir), vmis: path.join(dir, vmis) }, '--socket-owner', SOCKET_OWNER_ARG, '--orphan-grace', '0s', '--resync', '1s');
const slotFile = async (s: string): Promise<{ ready: boolean; disks: Array<{ name: string; phase: string }> }> =>
  JSON.parse(await readFile(path.join(dir, 'st', 'slots', `${s}.json`), 'utf8')) as { ready: boolean; disks: Array<{ name: string; phase: string }> };
const nodeStatus = async (): Promise<{ updatedAt: string }> => NodeStatusSchema.parse(JSON.parse(await readFile(path.join(dir, 'st', 'status.json'), 'utf8')));

async function baseImage(): Promise<string> {
  const image = path.join(dir, 'base.raw');
  await writeFile(image, 'GOLDEN\n');
  await truncate(image, 4 * 2 ** 20);
  return image;
}

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'asec-'));
  await mkdir(path.join(dir, 'vmis'));
});

afterEach(async () => {
  await killAll(procs);
  for (const s of sockets) s.destroy();
  sockets.clear();
  await new Promise((r) => (server ? server.close(r) : r(undefined)));
  server = undefined;
  await killAgentQsd(path.join(dir, 'st'));
  await rm(dir, { recursive: true, force: true });
});

describe.skipIf(missing)('agent process: hostile neighbours and sources', () => {
  it('F4: an image served a byte every 2 s stays Importing while another VMI gets Ready and status keeps being written', async () => {
    const body = Buffer.alloc(1024 * 1024, 0x42);
    server = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-length': body.length });
      let sent = 0;
      const t = setInterval(() => {
        if (res.destroyed) return clearInterval(t);
        res.write(body.subarray(sent, ++sent));
      }, 2_000);
      res.on('close', () => clearInterval(t));
    });
    server.on('connection', (s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
    await new Promise<void>((r) => server?.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/slow.raw`;
    const sha = createHash('sha256').update(body).digest('hex');
    await writeFile(
      path.join(dir, 'images.yaml'),
      `apiVersion: kubevirt-spdk.io/v1alpha1\nkind: CachedImage\nmetadata: {name: slow}\nspec:\n  source: {http: {url: "${url}", sha256: ${sha}}}\n  size: 1Mi\n` +
        `---\napiVersion: kubevirt-spdk.io/v1alpha1\nkind: CachedImage\nmetadata: {name: base}\nspec:\n  source: {hostPath: {path: ${await baseImage()}}}\n`,
    );
    await writeFile(path.join(dir, 'vmis', 'a.yaml'), vmiYaml('a', 'slot-01', '- name: root\n  spdkVhostBlkDisk: {image: slow, capacity: 8Mi}'));
    await writeFile(path.join(dir, 'vmis', 'b.yaml'), vmiYaml('b', 'slot-02', '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 8Mi}\n- name: data\n  spdkVhostBlkDisk: {blank: {}, capacity: 8Mi}'));
    startCli(agentArgs(), procs);
    await until('slot-02 ready', async () => (await slotFile('slot-02')).ready || undefined);
    expect(await connectable(path.join(dir, 'vh', 'slot-02', 'root'))).toBe(true);
    // A VMI that appears while the download crawls is provisioned too.
    await writeFile(path.join(dir, 'vmis', 'c.yaml'), vmiYaml('c', 'slot-03', '- name: scratch\n  spdkVhostBlkDisk: {blank: {}, capacity: 8Mi}'));
    await until('slot-03 ready', async () => {
      const f = await readFile(path.join(dir, 'st', 'slots', 'slot-03.json'), 'utf8').catch(() => undefined);
      return f !== undefined && (JSON.parse(f) as { ready: boolean }).ready ? true : undefined;
    });
    const a = await slotFile('slot-01');
    expect(a.ready).toBe(false);
    expect(a.disks).toEqual([expect.objectContaining({ name: 'root', phase: 'Importing' })]);
    // Rounds go on while the import crawls: status.json is rewritten (resync 1s).
    const before = (await nodeStatus()).updatedAt;
    await until('a newer status.json', async () => ((await nodeStatus()).updatedAt !== before ? true : undefined), 15_000);
    expect((await slotFile('slot-01')).disks[0]?.phase).toBe('Importing');
  }, 60_000);

  it('F6: a second agent on the same state dir exits non-zero and touches nothing; a SIGKILLed agent leaves no stuck lock', async () => {
    await writeFile(
      path.join(dir, 'images.yaml'),
      `apiVersion: kubevirt-spdk.io/v1alpha1\nkind: CachedImage\nmetadata: {name: base}\nspec:\n  source: {hostPath: {path: ${await baseImage()}}}\n`,
    );
    await writeFile(path.join(dir, 'vmis', 'a.yaml'), vmiYaml('a', 'slot-01', '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 8Mi}'));
    const first = startCli(agentArgs(), procs);
    await until('slot-01 ready', async () => (await slotFile('slot-01')).ready || undefined);
    // The second one sees no VMI at all: it would delete the first one's disks as orphans.
    await mkdir(path.join(dir, 'empty'));
    const second = startCli(agentArgs('st', 'empty'), procs);
    expect(await exited(second)).toBe(1);
    expect(second.out.join('')).toContain(`state dir ${path.join(dir, 'st')} is in use by another agent`);
    expect(await connectable(path.join(dir, 'vh', 'slot-01', 'root'))).toBe(true);
    expect((await slotFile('slot-01')).ready).toBe(true);
    expect(first.exitCode).toBeNull();

    first.kill('SIGKILL');
    await exited(first);
    // No stale lock: the next agent starts and serves the VMI.
    const third = startCli(agentArgs(), procs);
    await until('slot-01 served again', async () => ((await connectable(path.join(dir, 'vh', 'slot-01', 'root'))) && (await slotFile('slot-01')).ready ? true : undefined));
    expect(third.exitCode).toBeNull();
    expect(third.out.join('')).not.toContain('in use by another agent');
  }, 60_000);
});
