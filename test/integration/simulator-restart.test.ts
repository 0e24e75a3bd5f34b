import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { simArgv } from '../helpers/cli.js';
import { startSimProcess } from '../helpers/process.js';
import { RawRpcClient } from '../unit/simulator/rpc-client.js';

/**
 * The simulator as a real process (testing/spdk-sim/main.ts), killed with SIGKILL and restarted: controllers
 * and malloc bdevs are gone, the lvstore on the aio file comes back with every lvol when the
 * aio bdev is created again, and external-snapshot clones whose image got a new UUID are
 * degraded, as with spdk_tgt v24.01.
 */
const MiB = 1024 * 1024;
let dir: string;
const children: ChildProcess[] = [];

async function startSim(...extra: string[]): Promise<{ proc: ChildProcess; client: RawRpcClient }> {
  const { command, args } = simArgv(
    '--socket', path.join(dir, 'r.sock'),
    '--vhost-dir', path.join(dir, 'v'),
    '--state-dir', path.join(dir, 'state'),
    '--cpumask', '0x3',
    ...extra,
  );
  const proc = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(proc);
  await new Promise<void>((resolve, reject) => {
    let err = '';
    const onData = (d: Buffer): void => {
      err += d.toString();
      for (const line of err.split('\n')) {
        try {
          if ((JSON.parse(line) as { event?: string }).event === 'listening') {
            proc.stderr?.off('data', onData);
            proc.stderr?.resume();
            return resolve();
          }
        } catch {
          // not a complete JSON line yet
        }
      }
    };
    proc.stderr?.on('data', onData);
    proc.once('exit', (code) => reject(new Error(`spdk-sim exited with ${code}: ${err}`)));
  });
  return { proc, client: await RawRpcClient.connect(path.join(dir, 'r.sock')) };
}

function exited(proc: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve({ code: proc.exitCode, signal: proc.signalCode });
    proc.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sr-'));
  await fs.mkdir(path.join(dir, 'v', 'slot-01'), { recursive: true });
  for (const [name, size] of [['pool.img', 64 * MiB], ['image.raw', 8 * MiB]] as const) {
    const fh = await fs.open(path.join(dir, name), 'w');
    await fh.truncate(size);
    await fh.close();
  }
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await fs.rm(dir, { recursive: true, force: true });
});

type LvolInfo = { alias: string; uuid: string; is_snapshot: boolean; is_clone: boolean; is_esnap_clone: boolean; is_degraded: boolean; is_thin_provisioned: boolean };

describe('spdk-sim restart', () => {
  it('after SIGKILL, re-creating the aio bdev brings the lvstore and all lvols back, no controllers', async () => {
    const first = await startSim();
    const c = first.client;
    await c.ok('bdev_aio_create', { name: 'pool', filename: path.join(dir, 'pool.img'), block_size: 512 });
    const lvsUuid = await c.ok<string>('bdev_lvol_create_lvstore', { bdev_name: 'pool', lvs_name: 'lvs', cluster_sz: MiB });
    await c.ok('bdev_aio_create', { name: 'image', filename: path.join(dir, 'image.raw'), block_size: 512 });
    await c.ok('bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'golden', size_in_mib: 8 });
    await c.ok('bdev_lvol_snapshot', { lvol_name: 'lvs/golden', snapshot_name: 'golden-snap' });
    await c.ok('bdev_lvol_clone', { snapshot_name: 'lvs/golden-snap', clone_name: 'vm1' });
    await c.ok('bdev_lvol_clone_bdev', { bdev: 'image', lvs_name: 'lvs', clone_name: 'hydrating' });
    await c.ok('bdev_lvol_create', { lvs_name: 'lvs', lvol_name: 'ro', size_in_mib: 2, thin_provision: true });
    await c.ok('bdev_lvol_set_read_only', { name: 'lvs/ro' });
    await c.ok('bdev_malloc_create', { name: 'scratch', num_blocks: 64, block_size: 512 });
    await c.ok('vhost_create_blk_controller', { ctrlr: 'slot-01/root', dev_name: 'lvs/vm1', cpumask: '0x2' });
    const before = await c.ok<LvolInfo[]>('bdev_lvol_get_lvols');
    const [lvsBefore] = await c.ok<Array<{ free_clusters: number }>>('bdev_lvol_get_lvstores');
    c.close();

    first.proc.kill('SIGKILL');
    expect((await exited(first.proc)).signal).toBe('SIGKILL');
    // A killed target leaves its controller socket behind.
    expect(existsSync(path.join(dir, 'v', 'slot-01', 'root'))).toBe(true);

    const second = await startSim();
    const c2 = second.client;
    expect(await c2.ok('bdev_lvol_get_lvols')).toEqual([]);
    expect(await c2.ok('vhost_get_controllers')).toEqual([]);
    expect((await c2.call('bdev_get_bdevs', { name: 'scratch' })).error?.code).toBe(-19);

    await c2.ok('bdev_aio_create', { name: 'pool', filename: path.join(dir, 'pool.img'), block_size: 512 });
    const after = await c2.ok<LvolInfo[]>('bdev_lvol_get_lvols');
    // The image bdev is not there yet, so its clone is degraded; everything else is as before.
    expect(after).toEqual(before.map((l) => (l.alias === 'lvs/hydrating' ? { ...l, is_degraded: true } : l)));
    const [lvsAfter] = await c2.ok<Array<{ uuid: string; free_clusters: number }>>('bdev_lvol_get_lvstores');
    expect(lvsAfter).toMatchObject({ uuid: lvsUuid, free_clusters: lvsBefore?.free_clusters });
    const [vm1] = await c2.ok<Array<{ driver_specific: { lvol: Record<string, unknown> } }>>('bdev_get_bdevs', { name: 'lvs/vm1' });
    expect(vm1?.driver_specific.lvol).toMatchObject({ clone: true, base_snapshot: 'golden-snap' });
    expect((await c2.call('bdev_lvol_resize', { name: 'lvs/ro', size_in_mib: 4 })).error).toEqual({ code: -32602, message: 'Operation not permitted' });

    // v24.01 gives the re-created image a new UUID: the clone stays degraded.
    await c2.ok('bdev_aio_create', { name: 'image', filename: path.join(dir, 'image.raw'), block_size: 512 });
    const hydrating = (await c2.ok<LvolInfo[]>('bdev_lvol_get_lvols')).find((l) => l.alias === 'lvs/hydrating');
    expect(hydrating?.is_degraded).toBe(true);

    // The agent re-creates the controller under the same name; the stale socket is replaced.
    await c2.ok('vhost_create_blk_controller', { ctrlr: 'slot-01/root', dev_name: 'lvs/vm1', cpumask: '0x2' });
    c2.close();
    second.proc.kill('SIGTERM');
    expect(await exited(second.proc)).toEqual({ code: 0, signal: null });
    expect(existsSync(path.join(dir, 'v', 'slot-01', 'root'))).toBe(false);
  }, 60_000);
});

describe('spdk-sim arguments', () => {
  it('names the missing or bad option and exits 2', async () => {
    const proc = startSimProcess(['--vhost-dir', dir, '--poll-interval-ms', 'soon'], children);
    expect((await exited(proc)).code).toBe(2);
    const err = proc.out.join('');
    expect(err).toContain('--socket: required');
    expect(err).toContain('--poll-interval-ms: must be a whole number');
  }, 30_000);

  it('refuses a release it does not imitate', async () => {
    const proc = startSimProcess(['--socket', path.join(dir, 'x.sock'), '--vhost-dir', dir, '--version', '23.09'], children);
    expect((await exited(proc)).code).toBe(2);
    const err = proc.out.join('');
    expect(err).toContain('--version: must be one of 24.01, 25.09, got "23.09"');
  }, 30_000);

  it('--version 25.09 answers as v25.09: its version, no OCF, set_parent present', async () => {
    const { proc, client } = await startSim('--version', '25.09');
    try {
      expect(await client.ok('spdk_get_version')).toEqual({ version: 'SPDK v25.09', fields: { major: 25, minor: 9, patch: 0, suffix: '' } });
      const methods = await client.ok<string[]>('rpc_get_methods');
      expect(methods).toContain('bdev_lvol_set_parent');
      expect(methods.filter((m) => m.startsWith('bdev_ocf_'))).toEqual([]);
      expect(await client.call('bdev_ocf_get_bdevs')).toMatchObject({ error: { code: -32601, message: 'Method not found' } });
    } finally {
      client.close();
      proc.kill('SIGTERM');
      await exited(proc);
    }
  }, 30_000);
});
