import { stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { STATUS_ANNOTATION } from '../../src/api/volumes.js';
import { VmiStatusSchema } from '../../src/api/status.js';
import { desiredOf, vmi as fixtureVmi } from '../unit/agent/fixtures.js';
import { VMIS, PODS, eventually, schedule as scheduleVmi, startClusterRig, stopClusterRig, type ClusterRig } from '../helpers/cluster-rig.js';
import { Tally, rng, runSeed, scale } from './seed.js';
import { SimRig, hostImage } from './sim-rig.js';

/**
 * Cluster mode under faults: the agent's informers against the fake API server (which goes
 * away for a while, and expires watches with 410 Gone, in the middle of provisioning), and
 * VMIs deleted mid-provisioning. No disk may be deleted while its VMI exists; everything
 * converges once the API server is back; a deleted VMI's disks are all collected. The
 * migration hold is tested on the NodeAgent's desired state: a disk a migration needs is a
 * desired export. FAULT_SEED replays a run, FAULT_SCALE lengthens it.
 */
const SEED = runSeed();
const SCALE = scale();
const tally = new Tally();
console.log(`[faults] cluster suite seed=${SEED} (replay with FAULT_SEED=${SEED}) scale=${SCALE}`);

const NODE = 'node-a';
const VOLUMES = '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 64Mi}\n- name: data\n  spdkVhostBlkDisk: {blank: {}, capacity: 16Mi}\n';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Rig = ClusterRig & {
  /** Backend deletions, each with the VMIs that existed in the API server at that moment. */
  deletions: Array<{ call: string; existing: string[] }>;
};

let rig: Rig | undefined;
let simRig: SimRig | undefined;

afterEach(async () => {
  const r = rig;
  rig = undefined;
  if (r) await stopClusterRig(r);
  await simRig?.cleanup();
  simRig = undefined;
});
afterAll(() => {
  console.log(tally.line('cluster', SEED));
});

async function startRig(): Promise<Rig> {
  const deletions: Rig['deletions'] = [];
  const r = await startClusterRig({
    node: NODE,
    lvstoreMiB: 512,
    instrument: (backend, api) => {
      for (const m of ['deleteDisk', 'deleteController'] as const) {
        const orig = backend[m].bind(backend);
        backend[m] = (name: string) => {
          deletions.push({ call: `${m}:${name}`, existing: api.list(VMIS).map((v) => String(v.metadata?.name)) });
          return orig(name);
        };
      }
    },
  });
  return { ...r, deletions };
}

const schedule = (r: Rig, name: string, slot: string): void => scheduleVmi(r, name, `uid-${name}`, slot, VOLUMES);

function unschedule(r: Rig, name: string): void {
  r.api.remove(VMIS, name, 'default');
  r.api.remove(PODS, `virt-launcher-${name}`, 'default');
  const i = r.slots.findIndex((s) => s.pod === `virt-launcher-${name}`);
  if (i >= 0) r.slots.splice(i, 1);
}

const ready = (r: Rig, name: string): boolean => {
  const a = (r.api.get(VMIS, name, 'default')?.metadata?.annotations as Record<string, string> | undefined)?.[STATUS_ANNOTATION];
  if (a === undefined) return false;
  const s = VmiStatusSchema.parse(JSON.parse(a));
  return s.disks.length === 2 && s.disks.every((d) => d.phase === 'Ready');
};

/** spdk_tgt's view: exactly these VMIs' controllers and disks, plus the golden. */
function expectServes(r: Rig, names: Array<{ name: string; slot: string }>, what: string): void {
  const snap = r.sim.snapshot();
  const want = names.flatMap((n) => [`${n.slot}/root`, `${n.slot}/data`]).sort();
  expect(snap.controllers.map((c) => c.name).sort(), `${what}: controllers`).toEqual(want);
  expect(snap.lvols.filter((l) => !l.name.startsWith('img-')).length, `${what}: one lvol per disk: ${snap.lvols.map((l) => l.name).join(',')}`).toBe(want.length);
  tally.held('serves-exactly-desired');
}

/** Nothing at all was deleted while `vmi` existed (no other VMI is ever deleted here, so any deletion is its). */
function expectNoDeleteWhileExists(r: Rig, vmi: string, what: string): void {
  expect(r.deletions.filter((d) => d.existing.includes(vmi)).map((d) => d.call), `${what}: deletions while VMI ${vmi} existed`).toEqual([]);
  tally.held('no-delete-while-vmi-exists');
}

describe('API server away and watches expired (410) during provisioning', () => {
  it('nothing is deleted, and every VMI converges once the API server is back', async () => {
    const rand = rng(SEED ^ 0xa91);
    const rounds = Math.ceil(2 * SCALE);
    for (let round = 0; round < rounds; round++) {
      rig = await startRig();
      const r = rig;
      const vms = [
        { name: 'vm1', slot: 'slot-01' },
        { name: 'vm2', slot: 'slot-02' },
      ];
      for (const v of vms) schedule(r, v.name, v.slot);
      await r.cluster.start();
      const faults: string[] = [];
      for (let f = 0; f < 3; f++) {
        await sleep(rand.int(0, 150));
        if (rand.next() < 0.5) {
          r.api.expireWatches();
          faults.push('410');
        } else {
          await r.api.goAway();
          // The cluster moves on while the agent cannot see it: a VMI scheduled here.
          if (f === 0) {
            vms.push({ name: 'vm3', slot: 'slot-03' });
            schedule(r, 'vm3', 'slot-03');
          }
          const away = rand.int(100, 800);
          await sleep(away);
          await r.api.comeBack();
          faults.push(`away ${away}ms`);
        }
        tally.faults++;
      }
      const what = `round ${round}: ${faults.join(', ')} (seed ${SEED})`;
      for (const v of vms) await eventually(`${what}: ${v.name} Ready`, () => ready(r, v.name));
      await eventually(`${what}: ready`, () => r.cluster.ready() === true);
      expect(r.deletions.map((d) => d.call), `${what}: nothing deleted`).toEqual([]);
      tally.held('nothing-deleted');
      await r.cluster.agent.reconcile('check');
      expectServes(r, vms, what);
      for (const v of vms) expect((await stat(path.join(r.dir, 'vh', v.slot, 'root'))).isSocket(), what).toBe(true);
      tally.scenarios++;
      await stopClusterRig(r);
      rig = undefined;
    }
  }, 90_000);
});

describe('VMI deleted during provisioning (cluster mode)', () => {
  it('its disks are collected, no other VMI loses anything, nothing is deleted while it exists', async () => {
    const rand = rng(SEED ^ 0xde1);
    const rounds = Math.ceil(3 * SCALE);
    for (let round = 0; round < rounds; round++) {
      rig = await startRig();
      const r = rig;
      schedule(r, 'keep', 'slot-01');
      schedule(r, 'gone', 'slot-02');
      await r.cluster.start();
      // The deletion lands anywhere from before the first listing to after the disks were ready.
      const after = rand.int(0, 400);
      await sleep(after);
      const what = `round ${round}: VMI deleted ${after}ms into provisioning (seed ${SEED})`;
      unschedule(r, 'gone');
      tally.faults++;
      await eventually(`${what}: keep Ready`, () => ready(r, 'keep'));
      await eventually(`${what}: gone collected`, () => {
        const snap = r.sim.snapshot();
        return !snap.controllers.some((c) => c.name.startsWith('slot-02/')) && snap.lvols.filter((l) => !l.name.startsWith('img-')).length === 2;
      });
      await r.cluster.agent.reconcile('check');
      expectServes(r, [{ name: 'keep', slot: 'slot-01' }], what);
      expectNoDeleteWhileExists(r, 'gone', what);
      const keepIds = r.sim.snapshot().lvols.flatMap((l) => [l.name, l.uuid, l.alias]);
      expect(r.deletions.filter((d) => d.call.includes('slot-01') || keepIds.some((id) => d.call.endsWith(id))).map((d) => d.call), `${what}: the other VMI lost nothing`).toEqual([]);
      await eventually(`${what}: slot file removed`, () => stat(path.join(r.dir, 'st', 'slots', 'slot-02.json')).then(() => false, () => true));
      tally.held('collected-after-delete');
      tally.scenarios++;
      await stopClusterRig(r);
      rig = undefined;
    }
  }, 90_000);
});

describe('VMI deleted while a migration holds its disks (desired exports)', () => {
  it('nothing held is deleted; all collected once the hold is released', async () => {
    const rand = rng(SEED ^ 0x3160);
    const rounds = Math.ceil(3 * SCALE);
    for (let round = 0; round < rounds; round++) {
      const held = new Set<string>();
      simRig = await SimRig.create();
      const r = simRig;
      const imgs = [await hostImage(r.dir, 'fedora')];
      const a = fixtureVmi('a', 'slot-01', [{ name: 'root', image: 'fedora', capacity: '8Mi' }, { name: 'data', blank: true, capacity: '4Mi' }]);
      const b = fixtureVmi('b', 'slot-02', [{ name: 'root', image: 'fedora', capacity: '8Mi' }]);
      const both = desiredOf([a, b], imgs);
      expect((await r.converge(r.agent, both)).converged).toBe(true);
      const aDisks = both.vmis.find((v) => v.ref.name === 'a')?.disks.map((d) => d.id) ?? [];
      // The migration holds some (at least one) of a's disks; a's VMI goes away on this node.
      for (const id of aDisks) if (rand.next() < 0.6) held.add(id);
      if (held.size === 0 && aDisks[0]) held.add(aDisks[0]);
      const what = `round ${round}: held ${[...held].join(',')} (seed ${SEED})`;
      const deleted: string[] = [];
      r.hook = (method, phase, _n, params) => {
        if (phase === 'before' && method === 'bdev_lvol_delete') deleted.push(String(params?.name));
      };
      const onlyB = desiredOf([b], imgs);
      const aVmi = both.vmis.find((v) => v.ref.name === 'a');
      const exports = (aVmi?.disks ?? [])
        .filter((d) => held.has(d.id))
        .map((d) => ({ id: d.id, vmi: d.vmi, disk: d.name, address: { kind: 'tcp' as const, host: '127.0.0.1', port: 4420 }, why: `test migration (seed ${SEED})` }));
      const whileHeld = { ...onlyB, exports };
      r.desired = whileHeld;
      r.agent.setDesired(whileHeld);
      for (let i = 0; i < 3; i++) await r.agent.reconcile('held');
      tally.faults++;
      const lvols = r.snapshot().lvols;
      for (const id of held) expect(lvols.some((l) => l.name === id), `${what}: held disk ${id} kept`).toBe(true);
      const heldUuids = new Set(lvols.filter((l) => held.has(l.name)).map((l) => l.uuid));
      expect(deleted.filter((d) => held.has(d.split('/').pop() ?? d) || heldUuids.has(d)), `${what}: no delete of a held disk`).toEqual([]);
      tally.held('held-kept');
      // The migration is over: the hold goes, and so do the disks.
      held.clear();
      await r.converge(r.agent, onlyB);
      const left = r.snapshot().lvols.filter((l) => aDisks.includes(l.name));
      expect(left.map((l) => l.name), `${what}: collected after release`).toEqual([]);
      expect(r.snapshot().controllers.map((c) => c.name).sort(), what).toEqual(['slot-02/root']);
      expect(r.violations, what).toEqual([]);
      tally.held('collected-after-release');
      tally.scenarios++;
      await r.cleanup();
      simRig = undefined;
    }
  }, 60_000);
});
