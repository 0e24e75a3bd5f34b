import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { SpdkBackend } from '../../src/backend/spdk/backend.js';
import { NvmfFabric, SpdkSimulator } from './index.js';
import { SpdkRpcClient } from '../../src/spdk/client.js';

/**
 * Two in-process SPDK simulators sharing one NVMe-oF fabric, each behind a real SpdkBackend:
 * a source and a target node on one machine, for migration tests and the bench.
 */
export interface SimNode {
  sim: SpdkSimulator;
  backend: SpdkBackend;
  vhostDir: string;
}
export interface SimPair {
  dir: string;
  source: SimNode;
  target: SimNode;
  close(): Promise<void>;
}

export async function startSimPair(): Promise<SimPair> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'msp-'));
  const fabric = new NvmfFabric();
  const node = async (n: string): Promise<SimNode> => {
    const vhostDir = path.join(dir, n, 'v');
    await fs.mkdir(vhostDir, { recursive: true });
    const sim = new SpdkSimulator({ socketPath: path.join(dir, n, 'rpc.sock'), vhostDir, fabric });
    await sim.start();
    const client = new SpdkRpcClient({ socketPath: path.join(dir, n, 'rpc.sock'), timeoutMs: 5_000 });
    const backend = new SpdkBackend({
      client,
      lvstore: { name: 'kvs', baseBdev: { kind: 'malloc', sizeMiB: 256 } },
      vhostDir,
      stateDir: path.join(dir, n, 'state'),
    });
    await backend.start();
    return { sim, backend, vhostDir };
  };
  const source = await node('a');
  const target = await node('b');
  return {
    dir,
    source,
    target,
    close: async () => {
      await Promise.allSettled([source.backend.close(), target.backend.close()]);
      await Promise.allSettled([source.sim.stop(), target.sim.stop()]);
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
