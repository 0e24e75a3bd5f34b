import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { DesiredState } from '../../src/agent/desired.js';
import type { ImageSpec } from '../../src/backend/types.js';
import type { FaultAction } from '../../testing/spdk-sim/index.js';
import { desiredOf, vmi } from '../unit/agent/fixtures.js';
import { Tally, rng, runSeed, scale, type Rng } from './seed.js';
import { MiB, SimRig, checkInvariants, hostImage } from './sim-rig.js';

/**
 * Fault injection against the real spdk backend and agent on the SPDK simulator: spdk_tgt
 * killed before or after every RPC of provisioning, import, eviction and recovery and
 * restarted after a random delay; RPCs that hang, time out, come back malformed or with
 * unexpected errors; a full lvstore; broken downloads; a VMI deleted mid-way. After each
 * scenario the node must converge and every invariant of sim-rig.ts must hold. The seed is
 * printed; FAULT_SEED=<seed> replays a run, FAULT_SCALE=<n> makes it longer (`make faults`).
 */
const SEED = runSeed();
const SCALE = scale();
const MAX_DELAY_MS = Number(process.env.FAULT_MAX_DELAY_MS ?? '20');
const tally = new Tally();
console.log(`[faults] spdk suite seed=${SEED} (replay with FAULT_SEED=${SEED}) scale=${SCALE}`);

let rig: SimRig | undefined;
afterEach(async () => {
  await rig?.cleanup();
  rig = undefined;
});
afterAll(() => {
  console.log(tally.line('spdk', SEED));
});

async function expectInvariants(r: SimRig, desired: DesiredState, goldens = new Map<string, string>(), what = ''): Promise<void> {
  const agent = r.agent;
  const report = await r.converge(agent, desired);
  expect(report.converged && report.settled, `${what}: not converged: ${JSON.stringify(report.vmis.flatMap((v) => v.disks))} ${report.problems.join(';')}`).toBe(true);
  for (const inv of await checkInvariants(r, agent, desired, goldens)) {
    expect(inv.problems, `${what}: invariant ${inv.name} (seed ${SEED})`).toEqual([]);
    tally.held(inv.name);
  }
  expect(r.violations, `${what}: live safety checks (seed ${SEED})`).toEqual([]);
  tally.held('live-safety');
}

const vmiA = (): ReturnType<typeof vmi> => vmi('a', 'slot-01', [{ name: 'root', image: 'fedora', capacity: '8Mi' }, { name: 'data', blank: true, capacity: '4Mi' }]);
const vmiB = (): ReturnType<typeof vmi> => vmi('b', 'slot-02', [{ name: 'root', image: 'debian', capacity: '8Mi' }]);

/** How many RPCs one clean run of `setup` then `run` makes: the kill points of a scenario. */
async function countCalls(setup: (r: SimRig) => Promise<void>, run: (r: SimRig) => Promise<void>): Promise<{ from: number; to: number }> {
  const r = await SimRig.create();
  try {
    await setup(r);
    const from = r.calls.length;
    await run(r);
    return { from, to: r.calls.length };
  } finally {
    await r.cleanup();
  }
}

/** Picks the steps to kill at: all of them at scale >= 2, else a seeded sample of about `n`. */
function killPoints(range: { from: number; to: number }, rand: Rng, n: number): number[] {
  const all = Array.from({ length: range.to - range.from }, (_, i) => range.from + i + 1);
  if (SCALE >= 2 || all.length <= n) return all;
  const picked = new Set<number>([all[0] ?? 1, all.at(-1) ?? 1]);
  while (picked.size < n) picked.add(rand.pick(all));
  return [...picked].sort((a, b) => a - b);
}

/**
 * The spdk_tgt-kill scenario shape: `setup` brings the node to a state, then spdk_tgt is
 * killed before or after call number k of `run` and restarted after 0..MAX_DELAY_MS; the
 * node must then converge on `final` with every invariant held.
 */
async function killEveryStep(
  name: string,
  images: (r: SimRig) => Promise<ImageSpec[]>,
  setup: (r: SimRig, imgs: ImageSpec[]) => Promise<void>,
  run: (r: SimRig, imgs: ImageSpec[]) => DesiredState,
  samples: number,
): Promise<number> {
  const rand = rng(SEED ^ hash(name));
  const range = await countCalls(
    async (r) => setup(r, await images(r)),
    async (r) => {
      const imgs = await images(r);
      await r.converge(r.agent, run(r, imgs));
    },
  );
  const points = killPoints(range, rand, Math.ceil(samples * SCALE));
  for (const k of points) {
    const phase = rand.next() < 0.5 ? 'before' : 'after';
    const delay = rand.int(0, MAX_DELAY_MS);
    const what = `${name}: kill ${phase} call ${k} restart after ${delay}ms`;
    rig = await SimRig.create();
    const r = rig;
    const imgs = await images(r);
    await setup(r, imgs);
    const goldens = new Map<string, string>();
    let killed = false;
    r.hook = async (_m, p, n) => {
      if (killed || n !== k || p !== phase) return;
      killed = true;
      tally.faults++;
      await r.killAndRestart(delay);
    };
    const desired = run(r, imgs);
    r.desired = desired;
    r.agent.setDesired(desired);
    await r.agent.converge('under-fault').catch(() => undefined);
    await r.settled();
    r.hook = undefined;
    await expectInvariants(r, desired, goldens, what);
    tally.scenarios++;
    await r.cleanup();
    rig = undefined;
  }
  return points.length;
}

function hash(s: string): number {
  let h = 0;
  for (const c of s) h = (Math.imul(h, 31) + c.charCodeAt(0)) | 0;
  return h;
}

/** Host images live in the rig's dir (removed with it). */
async function images(r: SimRig): Promise<ImageSpec[]> {
  return [await hostImage(r.dir, 'fedora'), await hostImage(r.dir, 'debian', 2 * MiB)];
}

describe('spdk_tgt killed at every step, restarted', () => {
  it('provisioning with import (clone, inflate, snapshot, controller)', async () => {
    const n = await killEveryStep(
      'provision',
      images,
      async () => undefined,
      (_r, imgs) => desiredOf([vmiA()], imgs),
      12,
    );
    expect(n).toBeGreaterThan(5);
  });

  it('eviction of an image whose last VMI went away', async () => {
    const n = await killEveryStep(
      'evict',
      images,
      async (r, imgs) => {
        const d = desiredOf([vmiA(), vmiB()], imgs);
        const rep = await r.converge(r.agent, d);
        expect(rep.converged).toBe(true);
      },
      // debian left the catalog: b's disk goes, then the debian golden is evicted.
      (_r, imgs) => desiredOf([vmiA()], imgs.filter((i) => i.name === 'fedora')),
      8,
    );
    expect(n).toBeGreaterThan(2);
  });

  it('recovery after a restart (controllers re-created), killed again mid-recovery', async () => {
    const n = await killEveryStep(
      'recovery',
      images,
      async (r, imgs) => {
        const d = desiredOf([vmiA(), vmiB()], imgs);
        expect((await r.converge(r.agent, d)).converged).toBe(true);
        await r.kill();
        await r.killAndRestart(0);
      },
      (_r, imgs) => desiredOf([vmiA(), vmiB()], imgs),
      8,
    );
    expect(n).toBeGreaterThan(2);
  });
});

describe('agent killed at every step, restarted (real backend)', () => {
  it('provisioning: a new agent process on the same state converges with no leaks', async () => {
    const rand = rng(SEED ^ hash('agent-kill'));
    const range = await countCalls(async () => undefined, async (r) => void (await r.converge(r.agent, desiredOf([vmiA()], await images(r)))));
    const points = killPoints(range, rand, Math.ceil(10 * SCALE));
    let killed = 0;
    for (const k of points) {
      rig = await SimRig.create();
      const r = rig;
      const imgs = await images(r);
      const desired = desiredOf([vmiA()], imgs);
      const frozen = new Promise<void>(() => undefined);
      let dead = false;
      const phase = rand.next() < 0.5 ? 'before' : 'after';
      r.hook = (_m, p, n) => {
        if (dead) return frozen;
        if (n === k && p === phase) {
          dead = true;
          tally.faults++;
          return frozen;
        }
      };
      r.desired = desired;
      r.agent.setDesired(desired);
      let finished = false;
      void r.agent
        .converge('doomed')
        .catch(() => undefined)
        .finally(() => (finished = true));
      // Bounded, but generous: on a loaded 2-core machine the rounds before call k can be slow.
      for (let i = 0; i < 1000 && !dead && !finished; i++) await new Promise((res) => setTimeout(res, 10));
      if (!dead && finished) {
        // Fewer calls than the counting run (listings shared between concurrent callers vary
        // with timing): call k never came, there was nothing to kill.
        await r.cleanup();
        rig = undefined;
        continue;
      }
      expect(dead, `kill point ${k} was reached`).toBe(true);
      killed++;
      // The process is gone: its client, backend (imports in memory) and agent with it.
      await r.replaceProcess();
      await expectInvariants(r, desired, new Map(), `agent killed ${phase} call ${k}`);
      tally.scenarios++;
      await r.cleanup();
      rig = undefined;
    }
    expect(points.length).toBeGreaterThan(5);
    expect(killed).toBeGreaterThan(points.length / 2);
  });
});

describe('RPC faults: hang, timeout, malformed, closed connection, unexpected errors', () => {
  it('random faults on random calls never leave a leak or a broken invariant', async () => {
    const rand = rng(SEED ^ hash('rpc-faults'));
    const actions: FaultAction[] = ['busy', 'hang', 'malformed', 'close', { code: -5, message: 'Input/output error' }, { code: -32603, message: 'unexpected' }, { code: 12345, message: 'what is this' }];
    const methods = ['bdev_get_bdevs', 'bdev_lvol_get_lvols', 'bdev_lvol_get_lvstores', 'vhost_get_controllers', 'bdev_aio_create', 'bdev_lvol_clone_bdev', 'bdev_lvol_inflate', 'bdev_lvol_snapshot', 'bdev_lvol_clone', 'bdev_lvol_resize', 'bdev_lvol_create', 'vhost_create_blk_controller', 'bdev_lvol_delete', 'bdev_aio_delete'];
    const n = Math.ceil(6 * SCALE);
    for (let i = 0; i < n; i++) {
      rig = await SimRig.create({ rpcTimeoutMs: 300 });
      const r = rig;
      const imgs = await images(r);
      const faults = rand.int(1, 4);
      const picked: string[] = [];
      for (let f = 0; f < faults; f++) {
        const method = rand.pick(methods);
        const action = rand.pick(actions);
        r.sim?.injectFault({ method, action, times: rand.int(1, 2) });
        picked.push(`${method}:${typeof action === 'string' ? action : action.code}`);
        tally.faults++;
      }
      const desired = desiredOf([vmiA(), vmiB()], imgs);
      await expectInvariants(r, desired, new Map(), `faults ${picked.join(' ')}`);
      tally.scenarios++;
      await r.cleanup();
      rig = undefined;
    }
  });
});

describe('lvstore full during clone, resize and inflate', () => {
  for (const method of ['bdev_lvol_clone', 'bdev_lvol_resize', 'bdev_lvol_inflate', 'bdev_lvol_create', 'bdev_lvol_clone_bdev']) {
    it(`ENOSPC on ${method}: the disk reports the error, nothing leaks, it converges once space is back`, async () => {
      rig = await SimRig.create();
      const r = rig;
      const imgs = await images(r);
      r.sim?.injectFault({ method, action: { code: -28, message: 'No space left on device' }, times: 50 });
      tally.faults++;
      const desired = desiredOf([vmiA()], imgs);
      r.desired = desired;
      r.agent.setDesired(desired);
      const rep = await r.agent.converge('full');
      const phases = rep.vmis.flatMap((v) => v.disks);
      expect(phases.some((d) => d.phase !== 'Ready')).toBe(true);
      expect(phases.filter((d) => d.phase !== 'Ready').every((d) => (d.message ?? '').length > 0 || d.phase === 'Importing' || d.phase === 'Provisioning')).toBe(true);
      expect(r.violations).toEqual([]);
      r.sim?.clearFaults();
      await expectInvariants(r, desired, new Map(), `ENOSPC on ${method}`);
      tally.scenarios++;
    });
  }

  it('an image bigger than the lvstore fails with a message and leaves nothing behind', async () => {
    rig = await SimRig.create({ lvsMiB: 8 });
    const r = rig;
    const big = await hostImage(r.dir, 'fedora', 12 * MiB);
    const desired = desiredOf([vmi('a', 'slot-01', [{ name: 'root', image: 'fedora', capacity: '16Mi' }])], [big]);
    r.desired = desired;
    const rep = await r.converge(r.agent, desired, 3);
    const disk = rep.vmis[0]?.disks[0];
    expect(disk?.phase).not.toBe('Ready');
    expect(disk?.message ?? '').toMatch(/space|ENOSPC|-28|full/i);
    const snap = r.snapshot();
    expect(snap.lvols.filter((l) => l.name.startsWith('img-') || l.name.startsWith('d-'))).toEqual([]);
    expect(snap.bdevs.filter((b) => b.kind === 'aio' && !snap.lvstores.some((s) => s.baseBdev === b.name))).toEqual([]);
    expect(r.violations).toEqual([]);
    tally.faults++;
    tally.scenarios++;
  });
});

describe('image download cut off, corrupted, slower than the timeout', () => {
  let server: Server | undefined;
  afterEach(async () => {
    await new Promise<void>((res) => (server ? server.close(() => res()) : res()));
    server?.closeAllConnections();
    server = undefined;
  });

  async function serve(body: Buffer, mode: { current: 'cut' | 'corrupt' | 'slow' | 'ok' }): Promise<string> {
    server = createServer((req, res) => {
      res.setHeader('content-length', String(body.length));
      if (mode.current === 'cut') {
        res.write(body.subarray(0, body.length >> 1));
        setTimeout(() => res.destroy(), 5);
      } else if (mode.current === 'corrupt') {
        const bad = Buffer.from(body);
        bad[1000] = (bad[1000] ?? 0) ^ 0xff;
        res.end(bad);
      } else if (mode.current === 'slow') {
        res.write(body.subarray(0, 4096));
        // never finishes: the idle timeout must fire
      } else res.end(body);
    });
    await new Promise<void>((res) => server?.listen(0, '127.0.0.1', () => res()));
    return `http://127.0.0.1:${(server?.address() as AddressInfo).port}/img.raw`;
  }

  for (const kind of ['cut', 'corrupt', 'slow'] as const) {
    it(`${kind}: the disk says why, no partial image is kept or used, and it converges once the source is good`, async () => {
      rig = await SimRig.create({ fetchOptions: { idleTimeoutMs: 200, timeoutMs: 3_000 } });
      const r = rig;
      const host = await hostImage(r.dir, 'fedora');
      const body = Buffer.from(await import('node:fs/promises').then((f) => f.readFile((host.source as { hostPath: { path: string } }).hostPath.path)));
      const mode = { current: kind as 'cut' | 'corrupt' | 'slow' | 'ok' };
      const url = await serve(body, mode);
      const sha256 = (host.source as { hostPath: { sha256: string } }).hostPath.sha256;
      const img: ImageSpec = { name: 'fedora', format: 'raw', source: { http: { url, sha256 } } };
      const desired = desiredOf([vmi('a', 'slot-01', [{ name: 'root', image: 'fedora', capacity: '8Mi' }])], [img]);
      r.desired = desired;
      r.agent.setDesired(desired);
      const rep = await r.agent.converge('bad-download');
      tally.faults++;
      const disk = rep.vmis[0]?.disks[0];
      expect(disk?.phase).not.toBe('Ready');
      const snap = r.snapshot();
      expect(snap.lvols.filter((l) => l.name === 'img-fedora')).toEqual([]);
      expect(snap.controllers).toEqual([]);
      mode.current = 'ok';
      await expectInvariants(r, desired, new Map(), `download ${kind}`);
      // Only the final image stays in the download dir (no partial files).
      const left = await readdir(path.join(r.paths.backendState(), 'images')).catch(() => [] as string[]);
      expect(left.filter((f) => /part|tmp/.test(f))).toEqual([]);
      tally.scenarios++;
    });
  }
});

describe('VMI deleted during provisioning', () => {
  it('at any step: everything it had is deleted, nothing leaks', async () => {
    const rand = rng(SEED ^ hash('vmi-deleted'));
    const range = await countCalls(async () => undefined, async (r) => void (await r.converge(r.agent, desiredOf([vmiA()], await images(r)))));
    const points = killPoints(range, rand, Math.ceil(8 * SCALE));
    for (const k of points) {
      rig = await SimRig.create();
      const r = rig;
      const imgs = await images(r);
      const first = desiredOf([vmiA()], imgs);
      const gone = desiredOf([vmiB()], imgs);
      let flipped = false;
      r.hook = (_m, p, n) => {
        if (!flipped && n === k && p === 'after') {
          flipped = true;
          tally.faults++;
          r.desired = gone;
          r.agent.setDesired(gone);
        }
      };
      r.desired = first;
      r.agent.setDesired(first);
      await r.agent.reconcile('provision').catch(() => undefined);
      r.hook = undefined;
      await expectInvariants(r, gone, new Map(), `VMI deleted after call ${k}`);
      tally.scenarios++;
      await r.cleanup();
      rig = undefined;
    }
    expect(points.length).toBeGreaterThan(3);
  });
});
