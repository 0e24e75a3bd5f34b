import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NvmfFabric, SpdkSimulator } from '../../../testing/spdk-sim/index.js';
import { RawRpcClient } from './rpc-client.js';

/**
 * Behaviours of the v25.09 lazy recording that its replay cannot show because they need a
 * running 'VM' (a vhost-user session): each test cites the recording's exchange. Two
 * simulators, A exporting and B attaching, joined by one NVMe-oF fabric.
 */
const MiB = 1024 * 1024;
let dir: string;
let sims: SpdkSimulator[];
let clients: RawRpcClient[];
let sessions: net.Socket[];

async function target(name: string, fabric: NvmfFabric): Promise<RawRpcClient> {
  const vhost = path.join(dir, `vhost-${name}`);
  await fs.mkdir(vhost);
  const sim = new SpdkSimulator({ socketPath: path.join(dir, `${name}.sock`), vhostDir: vhost, version: '25.09', fabric, detachTimeoutMs: 100 });
  await sim.start();
  sims.push(sim);
  const c = await RawRpcClient.connect(path.join(dir, `${name}.sock`));
  clients.push(c);
  return c;
}

/** A 'VM': a connection held open on a controller's socket, which the simulator counts as a session. */
async function vm(socket: string): Promise<net.Socket> {
  const s = net.connect(socket);
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  sessions.push(s);
  return s;
}

async function until(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('condition not reached');
}

/** A exports a 64 MiB golden lvol as nqn...:img on 127.0.0.1:4470; B has lvstore lvsB and attached it as imgAn1. */
async function exported(): Promise<{ a: RawRpcClient; b: RawRpcClient }> {
  const fabric = new NvmfFabric();
  const a = await target('A', fabric);
  const b = await target('B', fabric);
  await a.ok('bdev_malloc_create', { name: 'ma', num_blocks: (256 * MiB) / 4096, block_size: 4096 });
  await a.ok('bdev_lvol_create_lvstore', { bdev_name: 'ma', lvs_name: 'lvsA' });
  await a.ok('bdev_lvol_create', { lvs_name: 'lvsA', lvol_name: 'img', size_in_mib: 64 });
  await a.ok('bdev_lvol_snapshot', { lvol_name: 'lvsA/img', snapshot_name: 'golden' });
  await a.ok('nvmf_create_transport', { trtype: 'TCP' });
  await a.ok('nvmf_create_subsystem', { nqn: 'nqn.2016-06.io.spdk:img', allow_any_host: true });
  await a.ok('nvmf_subsystem_add_ns', { nqn: 'nqn.2016-06.io.spdk:img', namespace: { bdev_name: 'lvsA/golden' } });
  await a.ok('nvmf_subsystem_add_listener', { nqn: 'nqn.2016-06.io.spdk:img', listen_address: { trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: '4470' } });
  await b.ok('bdev_malloc_create', { name: 'mb', num_blocks: (256 * MiB) / 4096, block_size: 4096 });
  await b.ok('bdev_lvol_create_lvstore', { bdev_name: 'mb', lvs_name: 'lvsB' });
  expect(await b.ok('bdev_nvme_attach_controller', { name: 'imgA', trtype: 'tcp', adrfam: 'ipv4', traddr: '127.0.0.1', trsvcid: '4470', subnqn: 'nqn.2016-06.io.spdk:img' })).toEqual(['imgAn1']);
  return { a, b };
}

const controllers = async (b: RawRpcClient): Promise<Array<{ name: string; ctrlrs: Array<{ state: string }> }>> => b.ok('bdev_nvme_get_controllers');

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'lz-'));
  sims = [];
  clients = [];
  sessions = [];
});

afterEach(async () => {
  for (const s of sessions) s.destroy();
  for (const c of clients) c.close();
  for (const s of sims) await s.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

describe('NVMe-oF sources of esnap clones (v25.09 recording, sections d and e)', () => {
  it('after inflate, a VM that read through the source keeps its channel: detach answers -110 and the controller stays deleting until the VM goes (d: #250-#297)', async () => {
    const { b } = await exported();
    await b.ok('bdev_lvol_clone_bdev', { bdev: 'imgAn1', lvs_name: 'lvsB', clone_name: 'vm3-disk0' });
    await b.ok('vhost_create_blk_controller', { ctrlr: 'vm3.disk0', dev_name: 'lvsB/vm3-disk0' });
    const guest = await vm(path.join(dir, 'vhost-B', 'vm3.disk0'));
    expect(await b.ok('bdev_lvol_inflate', { name: 'lvsB/vm3-disk0' })).toBe(true);
    expect(await b.call('bdev_nvme_detach_controller', { name: 'imgA' })).toMatchObject({ error: { code: -110, message: 'Connection timed out' } });
    expect((await controllers(b)).map((c) => [c.name, c.ctrlrs[0]?.state])).toEqual([['imgA', 'deleting']]);
    guest.destroy();
    await until(async () => (await controllers(b)).length === 0);
  });

  it('the leak-free order: hydrate a helper clone, snapshot it, set_parent the VM disk onto it, then detach answers true (e2: #379-#388)', async () => {
    const { b } = await exported();
    await b.ok('bdev_lvol_clone_bdev', { bdev: 'imgAn1', lvs_name: 'lvsB', clone_name: 'vmN-disk0' });
    await b.ok('vhost_create_blk_controller', { ctrlr: 'vmN.disk0', dev_name: 'lvsB/vmN-disk0' });
    await vm(path.join(dir, 'vhost-B', 'vmN.disk0'));
    await b.ok('bdev_lvol_clone_bdev', { bdev: 'imgAn1', lvs_name: 'lvsB', clone_name: 'vmN-base' });
    await b.ok('bdev_lvol_inflate', { name: 'lvsB/vmN-base' });
    await b.ok('bdev_lvol_snapshot', { lvol_name: 'lvsB/vmN-base', snapshot_name: 'vmN-snap' });
    await b.ok('bdev_lvol_set_parent', { lvol_name: 'lvsB/vmN-disk0', parent_name: 'lvsB/vmN-snap' });
    await b.ok('bdev_lvol_delete', { name: 'lvsB/vmN-base' });
    expect(await b.ok('bdev_nvme_detach_controller', { name: 'imgA' })).toBe(true);
    expect(await controllers(b)).toEqual([]);
  });

  it('detach while an un-hydrated esnap clone reads through the source: -110, the bdev is gone by name, the clone is not degraded; deleting the clone lets the controller go (d: #303-#315)', async () => {
    const { b } = await exported();
    await b.ok('bdev_lvol_clone_bdev', { bdev: 'imgAn1', lvs_name: 'lvsB', clone_name: 'vm4-disk0' });
    expect(await b.call('bdev_nvme_detach_controller', { name: 'imgA' })).toMatchObject({ error: { code: -110 } });
    expect(await b.call('bdev_get_bdevs', { name: 'imgAn1' })).toMatchObject({ error: { code: -19, message: 'No such device' } });
    const [clone] = await b.ok<Array<{ is_degraded: boolean }>>('bdev_lvol_get_lvols', { lvs_name: 'lvsB' });
    expect(clone?.is_degraded).toBe(false);
    expect(await b.call('bdev_nvme_attach_controller', { name: 'imgA', trtype: 'tcp', traddr: '127.0.0.1', trsvcid: '4470', subnqn: 'nqn.2016-06.io.spdk:img' })).toMatchObject({ error: { code: -114 } });
    await b.ok('bdev_lvol_delete', { name: 'lvsB/vm4-disk0' });
    expect(await controllers(b)).toEqual([]);
  });

  it('the initiator bdev is named by the namespace NGUID, so an export with nguid = the image id satisfies any clone of that id (d: #218-#233)', async () => {
    const { a, b } = await exported();
    await a.ok('bdev_lvol_create', { lvs_name: 'lvsA', lvol_name: 'x', size_in_mib: 64 });
    await a.ok('nvmf_create_subsystem', { nqn: 'nqn.2016-06.io.spdk:x', allow_any_host: true });
    await a.ok('nvmf_subsystem_add_ns', { nqn: 'nqn.2016-06.io.spdk:x', namespace: { bdev_name: 'lvsA/x', uuid: '0c0ffee0-1111-4222-8333-777788889999' } });
    await a.ok('nvmf_subsystem_add_ns', { nqn: 'nqn.2016-06.io.spdk:x', namespace: { bdev_name: 'lvsA/img', nguid: '0C0FFEE0111142228333AAAABBBBCCCC' } });
    await a.ok('nvmf_subsystem_add_listener', { nqn: 'nqn.2016-06.io.spdk:x', listen_address: { trtype: 'tcp', traddr: '127.0.0.1', trsvcid: '4471' } });
    await b.ok('bdev_nvme_attach_controller', { name: 'X', trtype: 'tcp', traddr: '127.0.0.1', trsvcid: '4471', subnqn: 'nqn.2016-06.io.spdk:x' });
    const [ns1] = await b.ok<Array<{ uuid: string }>>('bdev_get_bdevs', { name: 'Xn1' });
    const [lvolX] = await a.ok<Array<{ uuid: string }>>('bdev_get_bdevs', { name: 'lvsA/x' });
    // `uuid` alone does not change what the initiator sees: the NGUID (the bdev's UUID) wins.
    expect(ns1?.uuid).toBe(lvolX?.uuid);
    expect((await b.ok<Array<{ uuid: string }>>('bdev_get_bdevs', { name: 'Xn2' }))[0]?.uuid).toBe('0c0ffee0-1111-4222-8333-aaaabbbbcccc');
  });
});

describe('sources that go away (v25.09 recording, sections e and g)', () => {
  it('a source killed without ctrlr_loss_timeout_sec: the controller fails and an inflate through it is -32602 EIO (g: #455-#461)', async () => {
    const { b } = await exported();
    await b.ok('bdev_lvol_clone_bdev', { bdev: 'imgAn1', lvs_name: 'lvsB', clone_name: 't-kill' });
    await sims[0]?.kill();
    expect(await b.call('bdev_lvol_inflate', { name: 'lvsB/t-kill' })).toMatchObject({ error: { code: -32602, message: 'Input/output error' } });
    expect((await controllers(b))[0]?.ctrlrs[0]?.state).toBe('failed');
  });

  it('with ctrlr_loss_timeout_sec the controller reconnects when the source exports again, and a pending inflate completes (g: #482-#497)', async () => {
    const fabric = new NvmfFabric();
    const a = await target('A', fabric);
    const b = await target('B', fabric);
    const exportGolden = async (c: RawRpcClient): Promise<void> => {
      await c.ok('nvmf_create_transport', { trtype: 'TCP' });
      await c.ok('nvmf_create_subsystem', { nqn: 'nqn.2016-06.io.spdk:img', allow_any_host: true });
      await c.ok('nvmf_subsystem_add_ns', { nqn: 'nqn.2016-06.io.spdk:img', namespace: { bdev_name: 'src', nguid: '6A1F6F6E6C614D7A9B1100000000A001' } });
      await c.ok('nvmf_subsystem_add_listener', { nqn: 'nqn.2016-06.io.spdk:img', listen_address: { trtype: 'tcp', traddr: '127.0.0.1', trsvcid: '4472' } });
    };
    await a.ok('bdev_malloc_create', { name: 'src', num_blocks: (64 * MiB) / 4096, block_size: 4096 });
    await exportGolden(a);
    await b.ok('bdev_malloc_create', { name: 'mb', num_blocks: (256 * MiB) / 4096, block_size: 4096 });
    await b.ok('bdev_lvol_create_lvstore', { bdev_name: 'mb', lvs_name: 'lvsB' });
    await b.ok('bdev_nvme_attach_controller', { name: 'tR', trtype: 'tcp', traddr: '127.0.0.1', trsvcid: '4472', subnqn: 'nqn.2016-06.io.spdk:img', ctrlr_loss_timeout_sec: 60, reconnect_delay_sec: 1 });
    await b.ok('bdev_lvol_clone_bdev', { bdev: 'tRn1', lvs_name: 'lvsB', clone_name: 't-kill2' });
    await sims[0]?.kill();
    expect((await controllers(b))[0]?.ctrlrs[0]?.state).toBe('reconnect_is_delayed');
    const inflate = b.call('bdev_lvol_inflate', { name: 'lvsB/t-kill2' }, 10_000);
    // A comes back with the same namespace identity (a second simulator in the same role).
    const a2 = await target('A2', fabric);
    await a2.ok('bdev_malloc_create', { name: 'src', num_blocks: (64 * MiB) / 4096, block_size: 4096 });
    await exportGolden(a2);
    expect(await inflate).toMatchObject({ result: true });
    expect((await controllers(b))[0]?.ctrlrs[0]?.state).toBe('enabled');
  });

  it('deleting the exported lvol drops the namespace: the host loses its bdev and reads through it fail (e: #402-#409)', async () => {
    const { a, b } = await exported();
    await a.ok('bdev_lvol_create', { lvs_name: 'lvsA', lvol_name: 'vmM', size_in_mib: 64 });
    await a.ok('nvmf_create_subsystem', { nqn: 'nqn.2016-06.io.spdk:mig', allow_any_host: true });
    await a.ok('nvmf_subsystem_add_ns', { nqn: 'nqn.2016-06.io.spdk:mig', namespace: { bdev_name: 'lvsA/vmM' } });
    await a.ok('nvmf_subsystem_add_listener', { nqn: 'nqn.2016-06.io.spdk:mig', listen_address: { trtype: 'tcp', traddr: '127.0.0.1', trsvcid: '4473' } });
    await b.ok('bdev_nvme_attach_controller', { name: 'migM', trtype: 'tcp', traddr: '127.0.0.1', trsvcid: '4473', subnqn: 'nqn.2016-06.io.spdk:mig' });
    await b.ok('bdev_lvol_clone_bdev', { bdev: 'migMn1', lvs_name: 'lvsB', clone_name: 'vmM-disk0' });
    expect(await a.ok('bdev_lvol_delete', { name: 'lvsA/vmM' })).toBe(true);
    expect(await b.call('bdev_get_bdevs', { name: 'migMn1' })).toMatchObject({ error: { code: -19 } });
    expect((await controllers(b)).find((c) => c.name === 'migM')?.ctrlrs[0]?.state).toBe('enabled');
    expect(await b.call('bdev_lvol_inflate', { name: 'lvsB/vmM-disk0' })).toMatchObject({ error: { code: -32602, message: 'Input/output error' } });
  });
});

describe('sources attached with ctrlr_loss_timeout_sec (probed on our v25.09 build)', () => {
  it('a snapshot of an esnap clone of such a source never answers', async () => {
    const { b } = await exported();
    await b.ok('bdev_nvme_detach_controller', { name: 'imgA' });
    await b.ok('bdev_nvme_attach_controller', { name: 'imgR', trtype: 'tcp', traddr: '127.0.0.1', trsvcid: '4470', subnqn: 'nqn.2016-06.io.spdk:img', ctrlr_loss_timeout_sec: -1, reconnect_delay_sec: 2 });
    await b.ok('bdev_lvol_clone_bdev', { bdev: 'imgRn1', lvs_name: 'lvsB', clone_name: 'base' });
    await expect(b.call('bdev_lvol_snapshot', { lvol_name: 'lvsB/base', snapshot_name: 'snap' }, 300)).rejects.toThrow(/no response \(timeout\)/);
  });

  it('without the snapshot: a read-only esnap clone is cloned, a helper is inflated, snapshotted, and the lazy golden repointed onto it; the controller detaches', async () => {
    const { b } = await exported();
    await b.ok('bdev_nvme_detach_controller', { name: 'imgA' });
    await b.ok('bdev_nvme_attach_controller', { name: 'imgR', trtype: 'tcp', traddr: '127.0.0.1', trsvcid: '4470', subnqn: 'nqn.2016-06.io.spdk:img', ctrlr_loss_timeout_sec: -1, reconnect_delay_sec: 2 });
    await b.ok('bdev_lvol_clone_bdev', { bdev: 'imgRn1', lvs_name: 'lvsB', clone_name: 'lazy' });
    expect(await b.ok('bdev_lvol_set_read_only', { name: 'lvsB/lazy' })).toBe(true);
    expect(await b.ok('bdev_lvol_set_read_only', { name: 'lvsB/lazy' })).toBe(true);
    await b.ok('bdev_lvol_clone', { snapshot_name: 'lvsB/lazy', clone_name: 'vm1' });
    await b.ok('bdev_lvol_clone_bdev', { bdev: 'imgRn1', lvs_name: 'lvsB', clone_name: 'hyd' });
    await b.ok('bdev_lvol_inflate', { name: 'lvsB/hyd' });
    await b.ok('bdev_lvol_snapshot', { lvol_name: 'lvsB/hyd', snapshot_name: 'gold' });
    await b.ok('bdev_lvol_delete', { name: 'lvsB/hyd' });
    expect(await b.ok('bdev_lvol_set_parent', { lvol_name: 'lvsB/lazy', parent_name: 'lvsB/gold' })).toBe(true);
    expect(await b.ok('bdev_nvme_detach_controller', { name: 'imgR' })).toBe(true);
  });
});

describe('metadata operations in flight (real v24.01 and v25.09: pipelined clones)', () => {
  it('clones of one snapshot sent in one write: the first succeeds and answers last, the others are -32602 busy; one at a time all succeed', async () => {
    const fabric = new NvmfFabric();
    const c = await target('S', fabric);
    await c.ok('bdev_malloc_create', { name: 'm', num_blocks: (64 * MiB) / 4096, block_size: 4096 });
    await c.ok('bdev_lvol_create_lvstore', { bdev_name: 'm', lvs_name: 'lvs', cluster_sz: MiB });
    await c.ok('bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'base', size_in_mib: 4, thin_provision: true });
    await c.ok('bdev_lvol_snapshot', { lvol_name: 'lvs/base', snapshot_name: 'snap' });
    c.write(
      [1, 2, 3, 4, 5].map((i) => JSON.stringify({ jsonrpc: '2.0', method: 'bdev_lvol_clone', id: i, params: { snapshot_name: 'lvs/snap', clone_name: `c${i}` } })).join(''),
    );
    const answers: Array<{ id: number; result?: string; error?: { code: number; message: string } }> = [];
    for (let i = 0; i < 5; i++) {
      const l = await c.nextLine(2000);
      if (l.kind !== 'line') throw new Error(`no answer: ${l.kind}`);
      answers.push(JSON.parse(l.text) as (typeof answers)[number]);
    }
    expect(answers.map((a) => a.id)).toEqual([2, 3, 4, 5, 1]);
    expect(answers.slice(0, 4).map((a) => a.error)).toEqual(Array(4).fill({ code: -32602, message: 'Device or resource busy' }));
    expect(typeof answers[4]?.result).toBe('string');
    for (const i of [2, 3, 4, 5]) await c.ok('bdev_lvol_clone', { snapshot_name: 'lvs/snap', clone_name: `c${i}` });
  });
});

describe('a sequence that crashes spdk_tgt (probed on our v24.01 and v25.09 builds)', () => {
  it('a delete sent with a resize of the same lvol in one write: neither answers and the target is gone', async () => {
    const fabric = new NvmfFabric();
    const c = await target('X', fabric);
    await c.ok('bdev_malloc_create', { name: 'm', num_blocks: (64 * MiB) / 4096, block_size: 4096 });
    await c.ok('bdev_lvol_create_lvstore', { bdev_name: 'm', lvs_name: 'lvs', cluster_sz: MiB });
    await c.ok('bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'a', size_in_mib: 8, thin_provision: true });
    c.write(
      JSON.stringify({ jsonrpc: '2.0', method: 'bdev_lvol_resize', id: 1, params: { name: 'lvs/a', size_in_mib: 16 } }) +
        JSON.stringify({ jsonrpc: '2.0', method: 'bdev_lvol_delete', id: 2, params: { name: 'lvs/a' } }),
    );
    expect(await c.nextLine(1000)).toMatchObject({ kind: 'closed', partial: '' });
    await expect(RawRpcClient.connect(path.join(dir, 'X.sock'))).rejects.toThrow();
  });
});
