import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import { existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NvmfFabric, SpdkSimulator } from '../../testing/spdk-sim/index.js';
import { until } from '../helpers/process.js';
import { RawRpcClient } from '../unit/simulator/rpc-client.js';

interface Rig {
  dir: string;
  sim: SpdkSimulator;
  client: RawRpcClient;
}

let rigs: Rig[] = [];
const open: net.Socket[] = [];

async function newRig(opts: { pollIntervalMs?: number; fabric?: NvmfFabric } = {}): Promise<Rig> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'si-'));
  await fs.mkdir(path.join(dir, 'v'));
  const sim = new SpdkSimulator({ socketPath: path.join(dir, 'r.sock'), vhostDir: path.join(dir, 'v'), ...opts });
  await sim.start();
  const client = await RawRpcClient.connect(path.join(dir, 'r.sock'));
  const rig = { dir, sim, client };
  rigs.push(rig);
  return rig;
}

function connectUnix(p: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(p);
    s.once('connect', () => {
      open.push(s);
      resolve(s);
    });
    s.once('error', reject);
  });
}

async function lvolDisk(c: RawRpcClient): Promise<string> {
  await c.ok('bdev_malloc_create', { name: 'M', num_blocks: 8192, block_size: 4096 });
  await c.ok('bdev_lvol_create_lvstore', { bdev_name: 'M', lvs_name: 'lvs', cluster_sz: 1048576 });
  return c.ok<string>('bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'disk', size_in_mib: 4, thin_provision: true });
}

beforeEach(() => {
  rigs = [];
});

afterEach(async () => {
  for (const s of open.splice(0)) s.destroy();
  for (const r of rigs) {
    r.client.close();
    await r.sim.stop();
    await fs.rm(r.dir, { recursive: true, force: true });
  }
});

describe('vhost controller sockets', () => {
  it('binds a real socket inside a slot directory, counts connections as sessions, and removes it on delete', async () => {
    const { dir, sim, client } = await newRig();
    await lvolDisk(client);
    await fs.mkdir(path.join(dir, 'v', 'slot-07'));
    await client.ok('vhost_create_blk_controller', { ctrlr: 'slot-07/root', dev_name: 'lvs/disk' });
    const sock = path.join(dir, 'v', 'slot-07', 'root');
    expect((await fs.stat(sock)).isSocket()).toBe(true);

    const qemu = await connectUnix(sock);
    await until('a session', async () => (await client.ok<Array<{ sessions: unknown[] }>>('vhost_get_controllers'))[0]?.sessions.length === 1, 2_000, 5);
    const [ctrl] = await client.ok<Array<{ ctrlr: string; socket: string; sessions: Array<{ id: number }> }>>('vhost_get_controllers', { name: 'slot-07/root' });
    expect(ctrl).toMatchObject({ ctrlr: 'slot-07/root', socket: sock });
    expect(sim.snapshot().controllers[0]?.sessions).toBe(1);

    qemu.destroy();
    await until('the session to end', () => sim.snapshot().controllers[0]?.sessions === 0, 2_000, 5);

    const again = await connectUnix(sock);
    const closed = new Promise<void>((resolve) => again.once('close', () => resolve()));
    await client.ok('vhost_delete_controller', { ctrlr: 'slot-07/root' });
    await closed;
    expect(existsSync(sock)).toBe(false);
  });

  it('fails with -32602 Input/output error when the slot directory does not exist', async () => {
    const { client } = await newRig();
    await lvolDisk(client);
    const r = await client.call('vhost_create_blk_controller', { ctrlr: 'slot-99/root', dev_name: 'lvs/disk' });
    expect(r.error).toEqual({ code: -32602, message: 'Input/output error' });
    expect(await client.ok('vhost_get_controllers')).toEqual([]);
  });

  it('replaces a stale socket file left by a killed target', async () => {
    const { dir, client } = await newRig();
    await lvolDisk(client);
    const sock = path.join(dir, 'v', 'c0');
    // A process killed with SIGKILL leaves its listening socket file behind.
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(sock)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    child.kill('SIGKILL');
    await new Promise<void>((resolve) => child.once('exit', () => resolve()));
    expect(existsSync(sock)).toBe(true);
    await client.ok('vhost_create_blk_controller', { ctrlr: 'c0', dev_name: 'lvs/disk' });
    await connectUnix(sock);
  });

  it('stop() closes the RPC socket and removes controller sockets', async () => {
    const { dir, sim, client } = await newRig();
    await lvolDisk(client);
    await client.ok('vhost_create_blk_controller', { ctrlr: 'c1', dev_name: 'lvs/disk' });
    await sim.stop();
    expect(existsSync(path.join(dir, 'v', 'c1'))).toBe(false);
    expect(existsSync(path.join(dir, 'r.sock'))).toBe(false);
    await sim.start(); // afterEach stops it again
  });
});

describe('fault injection', () => {
  it('busy, custom errors, then normal answers', async () => {
    const { sim, client } = await newRig();
    sim.injectFault({ method: 'spdk_get_version', times: 2, action: 'busy' });
    sim.injectFault({ method: 'framework_wait_init', action: { code: -32603, message: 'boom' } });
    expect((await client.call('spdk_get_version')).error).toEqual({ code: -16, message: 'Device or resource busy' });
    expect((await client.call('spdk_get_version')).error).toEqual({ code: -16, message: 'Device or resource busy' });
    expect((await client.call('spdk_get_version')).result).toMatchObject({ version: 'SPDK v24.01' });
    expect((await client.call('framework_wait_init')).error).toEqual({ code: -32603, message: 'boom' });
    expect((await client.call('framework_wait_init')).result).toBe(true);
  });

  it('a faulted call does not run: busy bdev_malloc_create creates nothing', async () => {
    const { sim, client } = await newRig();
    sim.injectFault({ method: 'bdev_malloc_create', action: 'busy' });
    await client.call('bdev_malloc_create', { name: 'X', num_blocks: 8, block_size: 512 });
    expect(sim.snapshot().bdevs).toEqual([]);
  });

  it('hang leaves the request unanswered while later ones are answered', async () => {
    const { sim, client } = await newRig();
    sim.injectFault({ method: 'bdev_get_bdevs', action: 'hang' });
    client.write('{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1}');
    expect(await client.nextLine(200)).toEqual({ kind: 'timeout' });
    expect((await client.call('framework_wait_init')).result).toBe(true);
  });

  it('malformed writes a broken line; close drops the connection; clearFaults removes pending faults', async () => {
    const { dir, sim, client } = await newRig();
    sim.injectFault({ method: 'spdk_get_version', action: 'malformed' });
    client.write('{"jsonrpc":"2.0","method":"spdk_get_version","id":7}');
    const line = await client.nextLine(2000);
    expect(line.kind).toBe('line');
    expect(() => JSON.parse(line.kind === 'line' ? line.text : '')).toThrow();

    sim.injectFault({ method: 'spdk_get_version', action: 'close' });
    client.write('{"jsonrpc":"2.0","method":"spdk_get_version","id":8}');
    expect(await client.nextLine(2000)).toEqual({ kind: 'closed', partial: '' });

    sim.injectFault({ method: 'spdk_get_version', times: 5, action: 'busy' });
    sim.clearFaults();
    const c2 = await RawRpcClient.connect(path.join(dir, 'r.sock'));
    try {
      expect((await c2.call('spdk_get_version')).result).toMatchObject({ version: 'SPDK v24.01' });
    } finally {
      c2.close();
    }
  });
});

describe('wire protocol', () => {
  it('answers many requests in one write, in order, each line ending in a newline', async () => {
    const { client } = await newRig();
    const ids = Array.from({ length: 50 }, (_, i) => i + 1);
    client.write(ids.map((id) => `{"jsonrpc":"2.0","method":"spdk_get_version","id":${id}}`).join(''));
    const got: unknown[] = [];
    for (const _ of ids) {
      const l = await client.nextLine(3000);
      if (l.kind !== 'line') throw new Error(l.kind);
      got.push((JSON.parse(l.text) as { id: unknown }).id);
    }
    expect(got).toEqual(ids);
  });

  it('reassembles a request split across writes', async () => {
    const { client } = await newRig();
    client.write('{"jsonrpc":"2.0","meth');
    await new Promise((r) => setTimeout(r, 20));
    client.write('od":"framework_wait_init","id":"a"}');
    const l = await client.nextLine(2000);
    expect(l.kind === 'line' && JSON.parse(l.text)).toEqual({ jsonrpc: '2.0', id: 'a', result: true });
  });

  it('with a poll interval, still answers every request', async () => {
    const { client } = await newRig({ pollIntervalMs: 4 });
    expect((await client.call('framework_wait_init')).result).toBe(true);
    expect(await client.ok<string>('bdev_malloc_create', { name: 'P', num_blocks: 8, block_size: 512 })).toBe('P');
  });

  it('bdev_get_bdevs with a timeout waits for a bdev created meanwhile', async () => {
    const { dir, client } = await newRig();
    client.write('{"jsonrpc":"2.0","method":"bdev_get_bdevs","id":1,"params":{"name":"late","timeout":5000}}');
    const other = await RawRpcClient.connect(path.join(dir, 'r.sock'));
    try {
      await other.ok('bdev_malloc_create', { name: 'late', num_blocks: 8, block_size: 512 });
    } finally {
      other.close();
    }
    const l = await client.nextLine(5000);
    expect(l.kind === 'line' && (JSON.parse(l.text) as { result: Array<{ name: string }> }).result[0]?.name).toBe('late');
  });
});

describe('NVMe-oF between two simulators', () => {
  it('exports an lvol and attaches it on the other side as <name>n1 with its size and UUID', async () => {
    const fabric = new NvmfFabric();
    const src = await newRig({ fabric });
    const dst = await newRig({ fabric });
    const uuid = await lvolDisk(src.client);
    const nqn = 'nqn.2016-06.io.spdk:vm1-disk';
    await src.client.ok('nvmf_create_transport', { trtype: 'TCP' });
    await src.client.ok('nvmf_create_subsystem', { nqn, allow_any_host: true });
    expect(await src.client.ok('nvmf_subsystem_add_ns', { nqn, namespace: { bdev_name: 'lvs/disk' } })).toBe(1);
    const listen = { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: '4420' };
    await src.client.ok('nvmf_subsystem_add_listener', { nqn, listen_address: listen });

    const wrongNqn = await dst.client.call('bdev_nvme_attach_controller', { name: 'X', trtype: 'tcp', traddr: '127.0.0.1', trsvcid: '4420', subnqn: 'nqn.2016-06.io.spdk:nope' });
    // Real v24.01: a listening target that does not know the NQN refuses the connect.
    expect(wrongNqn.error).toEqual({ code: -32602, message: 'Invalid parameters' });
    expect(await dst.client.ok('bdev_nvme_attach_controller', { name: 'Mig', trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: '4420', subnqn: nqn })).toEqual(['Mign1']);
    const [b] = await dst.client.ok<Array<{ name: string; uuid: string; num_blocks: number; block_size: number }>>('bdev_get_bdevs', { name: 'Mign1' });
    expect(b).toMatchObject({ name: 'Mign1', uuid, num_blocks: 1024, block_size: 4096 });
    await dst.client.ok('vhost_create_blk_controller', { ctrlr: 'mig', dev_name: 'Mign1' });

    const [sub] = await src.client.ok<Array<{ namespaces: Array<{ nsid: number }> }>>('nvmf_get_subsystems', { nqn });
    expect(sub?.namespaces).toHaveLength(1);
    expect(src.sim.snapshot().bdevs.find((x) => x.uuid === uuid)?.claim).toBe('exclusive_write');

    await dst.client.ok('bdev_nvme_detach_controller', { name: 'Mig' });
    expect((await dst.client.call('bdev_get_bdevs', { name: 'Mign1' })).error).toEqual({ code: -19, message: 'No such device' });
    expect((await dst.client.call('bdev_nvme_detach_controller', { name: 'Mig' })).error).toEqual({ code: -19, message: 'No such device' });
  });
});
