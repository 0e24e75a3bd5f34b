/**
 * The client against the simulator running as its own process (testing/spdk-sim/main.ts),
 * killed and started again mid-stream, as when spdk_tgt is restarted under the agent.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SpdkApi } from '../../src/spdk/api.js';
import { SpdkRpcClient } from '../../src/spdk/client.js';
import { SpdkError } from '../../src/spdk/errors.js';
import { simArgv } from '../helpers/cli.js';

let dir: string;
let socketPath: string;
let vhostDir: string;
let sim: ChildProcess | undefined;
let client: SpdkRpcClient;
let api: SpdkApi;

function startSim(): ChildProcess {
  const { command, args } = simArgv('--socket', socketPath, '--vhost-dir', vhostDir);
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, LOG_LEVEL: 'warn' } });
  child.stderr?.resume();
  return child;
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sc-'));
  socketPath = path.join(dir, 'rpc.sock');
  vhostDir = path.join(dir, 'vhost');
  await fs.mkdir(vhostDir);
  client = new SpdkRpcClient({ socketPath, timeoutMs: 20_000, reconnect: { initialDelayMs: 20, maxDelayMs: 200 } });
  api = new SpdkApi(client);
});

afterEach(async () => {
  await client.close();
  if (sim) await kill(sim);
  sim = undefined;
  await fs.rm(dir, { recursive: true, force: true });
});

describe('SpdkRpcClient across a simulator restart', () => {
  it('fails calls in flight with transport, reconnects, and later calls succeed', async () => {
    sim = startSim();
    await client.connect(); // retries until the child process listens
    expect((await api.spdkGetVersion()).version).toBe('SPDK v24.01');
    await api.bdevMallocCreate({ name: 'Malloc0', num_blocks: 256, block_size: 4096 });

    // bdev_get_bdevs with a timeout waits for the bdev to appear: these stay in flight.
    const inFlight = Array.from({ length: 5 }, (_, i) =>
      api.bdevGetBdevs({ name: `later${i}`, timeout: 15_000 }).then(
        () => undefined,
        (e: unknown) => e,
      ),
    );
    const disconnected = once(client, 'disconnected');
    await kill(sim);
    const errors = await Promise.all(inFlight);
    for (const e of errors) {
      expect(e).toBeInstanceOf(SpdkError);
      expect((e as SpdkError).kind).toBe('transport');
      expect((e as SpdkError).method).toBe('bdev_get_bdevs');
    }
    await disconnected;
    expect(client.connected).toBe(false);

    // Made while spdk_tgt is down: waits for the reconnect instead of failing.
    const whileDown = api.spdkGetVersion();
    const connected = once(client, 'connected');
    sim = startSim();
    await connected;
    expect((await whileDown).version).toBe('SPDK v24.01');
    // A new process: the malloc bdev is gone, as after a real spdk_tgt restart.
    const missing = await api.bdevGetBdevs({ name: 'Malloc0' }).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(SpdkError);
    expect((missing as SpdkError).kind).toBe('notFound');
    expect(await api.bdevMallocCreate({ name: 'Malloc0', num_blocks: 256, block_size: 4096 })).toBe('Malloc0');
  }, 40_000);
});

describe('SpdkApi result schemas against the in-process simulator', () => {
  it('accepts every wrapper result along the image-cache, vhost and NVMe-oF paths', async () => {
    const { SpdkSimulator } = await import('../../testing/spdk-sim/index.js');
    const inproc = new SpdkSimulator({ socketPath, vhostDir });
    await inproc.start();
    try {
      await client.connect();
      await api.frameworkWaitInit();
      expect(await api.rpcGetMethods()).toContain('bdev_lvol_clone_bdev');
      const img = path.join(dir, 'golden.raw');
      await fs.writeFile(img, Buffer.alloc(4 * 1024 * 1024));
      expect(await api.bdevMallocCreate({ name: 'Malloc0', num_blocks: 8192, block_size: 4096 })).toBe('Malloc0');
      // 4 KiB blocks like the lvstore's: real v24.01 cannot inflate an esnap clone of smaller ones.
      expect(await api.bdevAioCreate({ name: 'golden', filename: img, block_size: 4096 })).toBe('golden');
      const lvs = await api.bdevLvolCreateLvstore({ bdev_name: 'Malloc0', lvs_name: 'lvs0', cluster_sz: 1048576 });
      expect((await api.bdevLvolGetLvstores({ lvs_name: 'lvs0' }))[0]?.uuid).toBe(lvs);
      await api.bdevLvolCloneBdev({ bdev: 'golden', lvs_name: 'lvs0', clone_name: 'img' });
      await api.bdevLvolInflate({ name: 'lvs0/img' });
      await api.bdevLvolSetReadOnly({ name: 'lvs0/img' });
      await api.bdevLvolCreate({ lvol_name: 'base', size_in_mib: 4, lvs_name: 'lvs0', thin_provision: true });
      await api.bdevLvolSnapshot({ lvol_name: 'lvs0/base', snapshot_name: 'snap' });
      await api.bdevLvolClone({ snapshot_name: 'lvs0/snap', clone_name: 'vm1-disk0' });
      expect(await api.bdevLvolResize({ name: 'lvs0/vm1-disk0', size_in_mib: 8 })).toBe(true);
      const lvols = await api.bdevLvolGetLvols({ lvs_name: 'lvs0' });
      expect(lvols.find((l) => l.name === 'vm1-disk0')?.is_clone).toBe(true);
      const bdevs = await api.bdevGetBdevs();
      expect(bdevs.map((b) => b.name)).toContain('Malloc0');

      await fs.mkdir(path.join(vhostDir, 'slot-01'));
      expect(await api.vhostCreateBlkController({ ctrlr: 'slot-01/disk0', dev_name: 'lvs0/vm1-disk0', cpumask: '0x1' })).toBe(true);
      const ctrls = await api.vhostGetControllers({ name: 'slot-01/disk0' });
      expect(ctrls[0]?.socket).toBe(path.join(vhostDir, 'slot-01', 'disk0'));
      expect(ctrls[0]?.backend_specific.block?.readonly).toBe(false);
      await api.vhostDeleteController({ ctrlr: 'slot-01/disk0' });

      const nqn = 'nqn.2016-06.io.spdk:vm1-disk0';
      await api.nvmfCreateTransport({ trtype: 'TCP' });
      await api.nvmfCreateSubsystem({ nqn, allow_any_host: true });
      // The attach below is this target connecting to itself: a namespace whose NGUID is the
      // bdev's own UUID would not register (recorded on v24.01), so it gets an NGUID of its own.
      expect(await api.nvmfSubsystemAddNs({ nqn, namespace: { bdev_name: 'lvs0/vm1-disk0', nguid: '00112233445566778899AABBCCDDEEFF' } })).toBe(1);
      await api.nvmfSubsystemAddListener({ nqn, listen_address: { trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: '4420' } });
      expect((await api.nvmfGetSubsystems()).find((s) => s.nqn === nqn)?.namespaces[0]?.nsid).toBe(1);
      const attached = await api.bdevNvmeAttachController({ name: 'mig0', trtype: 'TCP', adrfam: 'IPv4', traddr: '127.0.0.1', trsvcid: '4420', subnqn: nqn });
      expect(attached).toEqual(['mig0n1']);
      await api.bdevNvmeDetachController({ name: 'mig0' });
      await api.nvmfDeleteSubsystem({ nqn });

      await api.bdevLvolDelete({ name: 'lvs0/vm1-disk0' });
      await api.bdevAioDelete({ name: 'golden' });
      expect(await api.spdkGetVersion()).toMatchObject({ fields: { major: 24, minor: 1 } });
    } finally {
      await client.close();
      await inproc.stop();
    }
  });
});
