import { mkdir, mkdtemp, rename, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ManualHealth } from '../../deviceplugin/health.js';
import { DevicePluginServer } from '../../deviceplugin/server.js';
import type { SlotStatus } from '../../src/api/status.js';
import { FakeKubelet } from '../helpers/fake-kubelet.js';
import { Tally, rng, runSeed, scale } from './seed.js';

/**
 * Kubelet restarts in the middle of allocations: the device plugin must notice its socket was
 * wiped, serve again and re-register; slots allocated before the restart still pass
 * PreStartContainer once the agent reports them ready (kubelet does not Allocate again for a
 * checkpointed allocation), a PreStartContainer cut by the restart ends (it never hangs), and new
 * allocations keep working. The restart lands at a seeded random point of each round.
 */
const SEED = runSeed();
const SCALE = scale();
const tally = new Tally();
console.log(`[faults] kubelet suite seed=${SEED} (replay with FAULT_SEED=${SEED}) scale=${SCALE}`);

let root: string | undefined;
let kubelet: FakeKubelet | undefined;
let plugin: DevicePluginServer | undefined;
let health: ManualHealth | undefined;

afterEach(async () => {
  await plugin?.close();
  await kubelet?.stop();
  health?.close();
  if (root) await rm(root, { recursive: true, force: true });
  plugin = undefined;
  kubelet = undefined;
  health = undefined;
  root = undefined;
});
afterAll(() => {
  console.log(tally.line('kubelet', SEED));
});

const SLOTS = 6;
const slotName = (i: number): string => `slot-${String(i).padStart(2, '0')}`;

describe('kubelet restarts during allocation', () => {
  it('the plugin re-registers every time; allocations and PreStartContainer keep working across the restart', async () => {
    root = await mkdtemp(path.join(os.tmpdir(), 'fk-'));
    const dpDir = path.join(root, 'dp');
    const vhostDir = path.join(root, 'vh');
    const stateDir = path.join(root, 'st');
    await mkdir(dpDir);
    kubelet = await FakeKubelet.start(dpDir);
    health = new ManualHealth(true);
    plugin = new DevicePluginServer({ pluginDir: dpDir, slotCount: SLOTS, vhostDir, stateDir, health, preStartTimeoutMs: 5_000, readinessPollMs: 20, checkIntervalMs: 50 });
    await plugin.start();
    await kubelet.waitForRegistration(1);
    const k = kubelet;

    /** The agent's slot report, as the agent writes it (temp file + rename). */
    const report = async (slot: string, ready: boolean): Promise<void> => {
      const status: SlotStatus = { slot, vmi: { namespace: 'default', name: `vm-${slot}`, uid: `u-${slot}` }, ready, disks: [{ name: 'root', phase: ready ? 'Ready' : 'Provisioning' }], updatedAt: new Date().toISOString() };
      const file = path.join(stateDir, 'slots', `${slot}.json`);
      await mkdir(path.dirname(file), { recursive: true });
      await writeFile(`${file}.tmp`, JSON.stringify(status));
      await rename(`${file}.tmp`, file);
    };

    const rand = rng(SEED ^ 0x4b1e);
    const rounds = Math.ceil(5 * SCALE);
    let registrations = 1;
    for (let r = 0; r < rounds; r++) {
      const slot = slotName(r % SLOTS);
      // Where the restart lands: 0 before Allocate, 1 after Allocate, 2 during PreStart (not ready), 3 after the ready report.
      const at = rand.int(0, 3);
      const what = `round ${r} ${slot}: kubelet restart at point ${at} (seed ${SEED})`;
      await report(slot, false);
      const restart = async (): Promise<void> => {
        await k.restart();
        tally.faults++;
        registrations++;
        const reg = await k.waitForRegistration(registrations);
        expect(reg.resource_name, what).toBe('kubevirt-spdk.io/vhost-slot');
        expect(reg.options?.pre_start_required, what).toBe(true);
        tally.held('re-registered');
      };
      if (at === 0) await restart();
      const alloc = await k.allocate([[slot]]);
      const mount = alloc.container_responses[0]?.mounts[0];
      expect(mount?.container_path, what).toBe('/var/run/kubevirt-spdk');
      expect(mount?.host_path, what).toBe(path.join(vhostDir, slot));
      expect((await stat(path.join(vhostDir, slot))).isDirectory(), what).toBe(true);
      tally.held('allocate');
      if (at === 1) await restart();
      // The first PreStart: one kubelet's call, cut by the restart when it lands during it.
      const first = k.preStart([slot], 10_000).then(
        () => 'ok' as const,
        (e: unknown) => e as Error,
      );
      if (at === 2) {
        await new Promise((res) => setTimeout(res, rand.int(0, 100)));
        await restart();
      }
      await report(slot, true);
      if (at === 3) await restart();
      // The restarted kubelet starts the container again: PreStart on the new registration, no new Allocate.
      await expect(k.preStart([slot], 10_000), what).resolves.toBeUndefined();
      tally.held('prestart-after-restart');
      // The cut call ended one way or the other (bounded by its deadline), and never with a wrong "ready".
      const res = await first;
      if (res !== 'ok') expect(res.message, what).not.toMatch(/predates/);
      tally.held('prestart-ends');
      tally.scenarios++;
    }
    expect(registrations - 1, 'every round restarted kubelet once').toBe(rounds);
    // And the device list is whole after all the restarts.
    const w = k.watch();
    expect((await w.next()).map((d) => d.ID).sort()).toEqual(Array.from({ length: SLOTS }, (_, i) => slotName(i)));
    w.close();
  }, 60_000);
});
