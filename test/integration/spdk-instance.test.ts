import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createSpdkBackend, type SpdkBackend } from '../../src/backend/spdk/index.js';
import { BackendError } from '../../src/backend/types.js';
import { SpdkSimulator } from '../../testing/spdk-sim/index.js';

/**
 * health().instance names the spdk_tgt process (a marker bdev only that process holds): a new
 * connection to the same target finds the same name, a restarted target gets a new one. This
 * is what lets a migration survive a reconnect of the RPC client and be cancelled by a restart.
 */

let dir: string | undefined;
const cleanup: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f().catch(() => undefined);
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function rig(): Promise<{ simOpts: ConstructorParameters<typeof SpdkSimulator>[0]; sim: SpdkSimulator; open: () => Promise<SpdkBackend> }> {
  dir = await mkdtemp(path.join(os.tmpdir(), 'sin-'));
  const d = dir;
  await mkdir(path.join(d, 'vh'));
  const simOpts = { socketPath: path.join(d, 'spdk.sock'), vhostDir: path.join(d, 'vh'), stateDir: path.join(d, 'sim') };
  const sim = new SpdkSimulator(simOpts);
  await sim.start();
  const open = async (): Promise<SpdkBackend> => {
    const b = createSpdkBackend({
      socketPath: simOpts.socketPath,
      vhostDir: simOpts.vhostDir,
      stateDir: path.join(d, 'st'),
      lvstore: { baseBdev: { kind: 'aio', filename: path.join(d, 'lvs.img'), sizeMiB: 64, blockSize: 512 } },
    });
    cleanup.push(() => b.close());
    await b.start();
    return b;
  };
  return { simOpts, sim, open };
}

const markers = (sim: SpdkSimulator): string[] => JSON.stringify(sim.snapshot()).match(/kspdk-instance-[0-9a-f]+/g) ?? [];

describe('spdk backend instance', () => {
  it('is kept by a reconnect to the same spdk_tgt, by a second backend on it, and changes with a new spdk_tgt', async () => {
    const r = await rig();
    let sim = r.sim;
    cleanup.push(() => sim.stop());
    const b1 = await r.open();
    const h1 = await b1.health();
    expect(h1).toMatchObject({ ok: true, kind: 'spdk' });
    expect(h1.instance).toMatch(/^[0-9a-f]{16}$/);
    expect(new Set(markers(sim))).toEqual(new Set([`kspdk-instance-${h1.instance}`]));

    // The RPC connection drops (the target closes it) and comes back to the same process.
    let reconnected = false;
    b1.once('connected', () => {
      reconnected = true;
    });
    sim.injectFault({ method: 'spdk_get_version', action: 'close' });
    await b1.health();
    for (let i = 0; i < 200 && !reconnected; i++) {
      await b1.health();
      await new Promise((res) => setTimeout(res, 10));
    }
    expect(reconnected).toBe(true);
    expect((await b1.health()).instance).toBe(h1.instance);

    // Another backend object (an agent restart) on the same process: the same instance, no second marker.
    const b2 = await r.open();
    expect((await b2.health()).instance).toBe(h1.instance);
    expect(new Set(markers(sim))).toEqual(new Set([`kspdk-instance-${h1.instance}`]));

    // A new spdk_tgt process: the marker (a malloc bdev, in memory only) is gone, so a new one.
    await sim.stop();
    sim = new SpdkSimulator(r.simOpts);
    await sim.start();
    let h3 = await b1.health();
    for (let i = 0; i < 200 && !h3.ok; i++) {
      await new Promise((res) => setTimeout(res, 10));
      h3 = await b1.health();
    }
    expect(h3.ok).toBe(true);
    expect(h3.instance).toMatch(/^[0-9a-f]{16}$/);
    expect(h3.instance).not.toBe(h1.instance);
    expect((await b2.health()).instance).toBe(h3.instance);
  });

  it('is no disk: observe does not list it and a bdev: disk may not name it', async () => {
    const r = await rig();
    cleanup.push(() => r.sim.stop());
    const b = await r.open();
    const { instance } = await b.health();
    const o = await b.observe();
    expect(o.disks).toEqual([]);
    expect(JSON.stringify(o)).not.toContain('kspdk-instance-');
    const err = await b.ensureDisk({ id: 'd-1', source: { kind: 'bdev', bdev: `kspdk-instance-${instance}` } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendError);
    expect(err).toMatchObject({ kind: 'invalid' });
    expect(String((err as Error).message)).toMatch(/marker that names the spdk_tgt process/);
  });
});
