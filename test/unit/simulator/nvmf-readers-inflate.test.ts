import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NvmfFabric, SpdkSimulator, type SpdkVersion } from '../../../testing/spdk-sim/index.js';
import { RawRpcClient } from './rpc-client.js';

/**
 * Two things the simulator learnt from our real v24.01 and v25.09 builds:
 * - nvmf_subsystem_get_controllers lists the hosts connected to a subsystem
 *   (test/fixtures/spdk/v*-nvmf-readers-transcript.jsonl, replayed here on three simulators);
 * - an inflate that overlaps another on the same target copies nothing yet answers true, and
 *   the first read of such a cluster (the examine of a snapshot) kills the target.
 */
const MiB = 1024 * 1024;
let dir: string;
let sims: SpdkSimulator[];
let clients: RawRpcClient[];

interface Line {
  target?: string;
  note?: string;
  event?: string;
  request?: { method: string; params?: Record<string, unknown> };
  response?: { result?: unknown; error?: { code: number; message: string } };
}

async function target(name: string, version: SpdkVersion, fabric: NvmfFabric, crashes: string[] = []): Promise<{ sim: SpdkSimulator; rpc: RawRpcClient }> {
  const vhost = path.join(dir, `vhost-${name}`);
  await fs.mkdir(vhost);
  const sim: SpdkSimulator = new SpdkSimulator({
    socketPath: path.join(dir, `${name}.sock`),
    vhostDir: vhost,
    version,
    fabric,
    onCrash: async () => {
      crashes.push(name);
      await sim.kill();
    },
  });
  await sim.start();
  sims.push(sim);
  const rpc = await RawRpcClient.connect(path.join(dir, `${name}.sock`));
  clients.push(rpc);
  return { sim, rpc };
}

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'snr-'));
  sims = [];
  clients = [];
});

afterEach(async () => {
  for (const c of clients) c.close();
  for (const s of sims) await s.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

/**
 * Host ids are random per process, and v25.09 counted 2 I/O qpairs just after a connect, 1 a
 * moment later: compare their presence, not their value.
 */
const normalise = (r: unknown): unknown =>
  JSON.parse(JSON.stringify(r).replace(/"hostid":"[0-9a-f-]{36}"/g, '"hostid":"<uuid>"').replace(/"num_io_qpairs":\d+/g, '"num_io_qpairs":"<n>"'));

describe.each(['24.01', '25.09'] as const)('nvmf_subsystem_get_controllers (v%s recording)', (version) => {
  it('answers every recorded exchange as the real target did: none connected, one entry per host, gone after a detach and after the host died, -32602 for an unknown or missing NQN', async () => {
    const fixture = path.join(import.meta.dirname, '../../fixtures/spdk', `v${version}-nvmf-readers-transcript.jsonl`);
    const lines = readFileSync(fixture, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Line);
    const fabric = new NvmfFabric();
    const t: Record<string, { sim: SpdkSimulator; rpc: RawRpcClient }> = {};
    for (const n of ['A', 'B', 'C']) t[n] = await target(n, version, fabric);
    let checked = 0;
    for (const line of lines) {
      if (line.event === 'kill' && line.target !== undefined) {
        await t[line.target]?.sim.kill();
        continue;
      }
      const req = line.request;
      if (!req || line.target === undefined || !line.response) continue;
      // Not taught to the simulator (its reply names threads and ephemeral ports).
      if (req.method === 'nvmf_subsystem_get_qpairs') continue;
      const got = await t[line.target]?.rpc.call(req.method, req.params);
      if (!req.method.startsWith('nvmf_subsystem_get_controllers')) {
        if (line.response.error === undefined) expect(got?.error, `${req.method} (${line.note ?? ''})`).toBeUndefined();
        continue;
      }
      expect(normalise(got?.error ?? got?.result), line.note).toEqual(normalise(line.response.error ?? line.response.result));
      checked++;
    }
    expect(checked).toBe(8);
  });
});

describe.each(['24.01', '25.09'] as const)('inflates that overlap (v%s)', (version) => {
  async function threeEsnapClones(): Promise<{ rpc: RawRpcClient; crashes: string[] }> {
    const crashes: string[] = [];
    const fabric = new NvmfFabric();
    const { rpc } = await target('T', version, fabric, crashes);
    await rpc.ok('bdev_malloc_create', { name: 'base', num_blocks: (512 * MiB) / 4096, block_size: 4096 });
    await rpc.ok('bdev_lvol_create_lvstore', { bdev_name: 'base', lvs_name: 'kvs' });
    for (const n of ['a', 'b', 'c']) {
      await rpc.ok('bdev_malloc_create', { name: `src-${n}`, num_blocks: (64 * MiB) / 4096, block_size: 4096 });
      await rpc.ok('bdev_lvol_clone_bdev', { bdev: `src-${n}`, lvs_name: 'kvs', clone_name: `imp-${n}` });
    }
    return { rpc, crashes };
  }

  it('one after another: every inflated lvol owns all its clusters and snapshots of them are fine', async () => {
    const { rpc, crashes } = await threeEsnapClones();
    for (const n of ['a', 'b', 'c']) expect(await rpc.ok('bdev_lvol_inflate', { name: `kvs/imp-${n}` })).toBe(true);
    for (const n of ['a', 'b', 'c']) await rpc.ok('bdev_lvol_snapshot', { lvol_name: `kvs/imp-${n}`, snapshot_name: `gold-${n}` });
    expect(crashes).toEqual([]);
  });

  it('at once: all answer true, the later ones copied nothing (thick, no parent, no data), and the examine of a snapshot of one kills the target', async () => {
    const { crashes } = await threeEsnapClones();
    // Three connections: SPDK runs each request as it arrives.
    const conns = await Promise.all(['a', 'b', 'c'].map(() => RawRpcClient.connect(path.join(dir, 'T.sock'))));
    clients.push(...conns);
    const answers = await Promise.all(['a', 'b', 'c'].map((n, i) => conns[i]?.ok('bdev_lvol_inflate', { name: `kvs/imp-${n}` })));
    expect(answers).toEqual([true, true, true]);
    const snap = sims[0]?.snapshot();
    const imp = (snap?.lvols ?? []).filter((l) => l.name.startsWith('imp-')).map((l) => [l.name, l.thin, l.parent, l.allocated, l.clusters]);
    expect(imp).toEqual([
      ['imp-a', false, null, 16, 16],
      ['imp-b', false, null, 0, 16],
      ['imp-c', false, null, 0, 16],
    ]);
    if (version === '25.09') {
      const listed = await conns[0]?.ok<Array<{ name: string; num_allocated_clusters: number }>>('bdev_lvol_get_lvols', { lvs_name: 'kvs' });
      expect(listed?.map((l) => [l.name, l.num_allocated_clusters])).toEqual([['imp-a', 16], ['imp-b', 0], ['imp-c', 0]]);
    }
    expect(crashes).toEqual([]);
    await conns[0]?.call('bdev_lvol_snapshot', { lvol_name: 'kvs/imp-b', snapshot_name: 'gold-b' }).catch(() => undefined);
    expect(crashes).toEqual(['T']);
  });
});
