/**
 * Provisioning many disks from one cached image through the spdk backend, against the SPDK
 * simulator: the agent runs ensureDisk + ensureController for every disk concurrently, so
 * what matters is how the backend pipelines its RPCs. Baseline: the same work done one disk
 * after another, in the same process.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { SpdkBackend } from '../src/backend/spdk/index.js';
import { SpdkRpcClient } from '../src/spdk/client.js';
import { SpdkSimulator } from '../testing/spdk-sim/index.js';
import { fmt, timeIt, type BenchSection } from './harness.js';

const MiB = 1024 * 1024;

interface Run {
  ms: number;
  rpcs: number;
  byMethod: Map<string, number>;
}

async function provision(disks: number, concurrent: boolean): Promise<Run> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sbb-'));
  const socketPath = path.join(dir, 'rpc.sock');
  const vhostDir = path.join(dir, 'vhost');
  await fs.mkdir(vhostDir);
  const sim = new SpdkSimulator({ socketPath, vhostDir, stateDir: path.join(dir, 'sim') });
  await sim.start();
  const client = new SpdkRpcClient({ socketPath, timeoutMs: 30_000 });
  const backend = new SpdkBackend({
    client,
    lvstore: { name: 'kvs', baseBdev: { kind: 'aio', filename: path.join(dir, 'lvs.img'), sizeMiB: 1024, blockSize: 512 } },
    vhostDir,
    stateDir: path.join(dir, 'state'),
  });
  try {
    await backend.start();
    const image = Buffer.alloc(8 * MiB, 1);
    const imagePath = path.join(dir, 'golden.raw');
    await fs.writeFile(imagePath, image);
    const sha256 = createHash('sha256').update(image).digest('hex');
    await backend.ensureImage({ name: 'golden', format: 'raw', source: { hostPath: { path: imagePath, sha256 } } });

    const byMethod = new Map<string, number>();
    const realCall = client.call.bind(client);
    client.call = (method, params, opts) => {
      byMethod.set(method, (byMethod.get(method) ?? 0) + 1);
      return realCall(method, params, opts);
    };
    const one = async (i: number): Promise<void> => {
      const d = await backend.ensureDisk({ id: `vm${i}-root`, source: { kind: 'image', image: 'golden' }, capacityBytes: 20 * 1024 * MiB });
      await backend.ensureController({ name: `slot-${String(i).padStart(3, '0')}/root`, diskRef: d.ref, readonly: false });
    };
    const { ms } = await timeIt(async () => {
      if (concurrent) await Promise.all(Array.from({ length: disks }, (_, i) => one(i)));
      else for (let i = 0; i < disks; i++) await one(i);
    });
    const rpcs = [...byMethod.values()].reduce((a, b) => a + b, 0);
    return { ms, rpcs, byMethod };
  } finally {
    await backend.close().catch(() => undefined);
    await sim.stop().catch(() => undefined);
    await fs.rm(dir, { recursive: true, force: true });
  }
}

export async function section(): Promise<BenchSection> {
  const n = 100;
  await provision(10, true); // warm up module loading and JIT
  const sequential = await provision(n, false);
  const concurrent = await provision(n, true);
  const per = (r: Run, m: string): string => fmt((r.byMethod.get(m) ?? 0) / n, 2);
  return {
    area: 'spdk backend',
    tables: [
      {
        title: `Provisioning ${n} disks (clone + resize + vhost controller) from one cached image`,
        columns: ['mode', 'total ms', 'ms per disk', 'RPCs per disk', 'lvol listings per disk', 'bdev lookups per disk', 'speed-up vs sequential'],
        rows: [
          ['sequential (baseline)', fmt(sequential.ms, 0), fmt(sequential.ms / n), fmt(sequential.rpcs / n), per(sequential, 'bdev_lvol_get_lvols'), per(sequential, 'bdev_get_bdevs'), '1.00'],
          ['concurrent', fmt(concurrent.ms, 0), fmt(concurrent.ms / n), fmt(concurrent.rpcs / n), per(concurrent, 'bdev_lvol_get_lvols'), per(concurrent, 'bdev_get_bdevs'), fmt(sequential.ms / concurrent.ms)],
        ],
        notes: [
          'Against the in-process SPDK simulator over its unix socket: the numbers show RPC pipelining and sharing, not SPDK speed.',
          'Concurrent callers share in-flight listings (bdev_lvol_get_lvols, vhost_get_controllers, golden lookup), so RPCs per disk drop towards the 3 that create something (clone, resize, controller) plus one bdev lookup.',
        ],
      },
    ],
  };
}
