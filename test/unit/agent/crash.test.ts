import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { DesiredState } from '../../../src/agent/desired.js';
import type { NodeAgent } from '../../../src/agent/agent.js';
import { desiredOf, harness, image, vmi, type Harness } from './fixtures.js';

/**
 * Crash-restart at every journaled step: the agent is "killed" at step k (a backend call
 * before or after its effect, or a journal write: from then on nothing it does lands), a
 * new agent starts from the same state dir and backend, and must converge with no leaks.
 */

const never = new Promise<void>(() => undefined);

function armCrash(h: Harness, k: number): { crashed: () => boolean; journalHook: () => Promise<void> } {
  let step = 0;
  let crashed = false;
  const tick = (): Promise<void> | void => {
    if (crashed) return never;
    if (++step >= k) {
      crashed = true;
      return never;
    }
  };
  h.backend.hook = () => tick();
  return { crashed: () => crashed, journalHook: async () => tick() };
}

async function runUntilCrashOrDone(agent: NodeAgent, crashed: () => boolean): Promise<'done' | 'crashed'> {
  const done = agent.converge('test').then(() => 'done' as const);
  const poll = new Promise<'crashed'>((resolve) => {
    const t = setInterval(() => {
      if (crashed()) {
        clearInterval(t);
        resolve('crashed');
      }
    }, 2);
    void done.then(() => clearInterval(t));
  });
  return Promise.race([done, poll]);
}

async function expectConverged(h: Harness, desired: DesiredState): Promise<void> {
  h.backend.hook = undefined;
  const agent = await h.newAgent();
  agent.setDesired(desired);
  const r = await agent.converge('restart');
  expect(r.converged).toBe(true);
  const disks = desired.vmis.flatMap((v) => v.disks);
  expect(r.vmis.flatMap((v) => v.disks.map((d) => d.phase)).every((p) => p === 'Ready')).toBe(true);
  // No leaks: exactly the desired objects, clone counts consistent, no stray sockets.
  expect([...h.backend.disks.keys()].sort()).toEqual(disks.filter((d) => d.source.kind !== 'bdev').map((d) => d.id).sort());
  expect([...h.backend.controllers.keys()].sort()).toEqual(disks.map((d) => d.controller).sort());
  for (const img of h.backend.images.values()) {
    expect(img.cloneCount).toBe([...h.backend.disks.values()].filter((d) => d.image === img.name).length);
  }
  const sockets = (await readdir(h.backend.vhostDir, { recursive: true, withFileTypes: true })).filter((e) => e.isSocket()).map((e) => path.relative(h.backend.vhostDir, path.join(e.parentPath, e.name)));
  expect(sockets.sort()).toEqual(disks.map((d) => d.controller).sort());
  // The journal knows exactly what it owns, and nothing is left pending.
  const j = (agent as unknown as { journal: { state: { pending: object; owned: object } } }).journal.state;
  expect(j.pending).toEqual({});
  expect(Object.keys(j.owned).sort()).toEqual(disks.map((d) => d.id).sort());
}

let h: Harness | undefined;
afterEach(async () => {
  await h?.cleanup();
  h = undefined;
});

const images = [image('fedora')];
const D1 = (): DesiredState => desiredOf([vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }, { name: 'data', blank: true }])], images);
const D2 = (): DesiredState => desiredOf([vmi('b', 'slot-02', [{ name: 'root', image: 'fedora' }])], images);

describe('crash at every step, then restart', () => {
  it('provisioning converges from a crash at any step', async () => {
    let k = 1;
    for (; k < 200; k++) {
      h = await harness();
      const arm = armCrash(h, k);
      const agent = await h.newAgent({ journal: { beforeWrite: arm.journalHook } });
      agent.setDesired(D1());
      const end = await runUntilCrashOrDone(agent, arm.crashed);
      await expectConverged(h, D1());
      await h.cleanup();
      h = undefined;
      if (end === 'done') break;
    }
    // Sanity: the scenario had many steps, so every one of them was a crash point.
    expect(k).toBeGreaterThan(10);
  });

  it('replacing one VMI by another converges from a crash at any step, deleting what the gone VMI had', async () => {
    let k = 1;
    for (; k < 200; k++) {
      h = await harness();
      h.agent.setDesired(D1());
      await h.agent.converge('setup');
      const arm = armCrash(h, k);
      const agent = await h.newAgent({ journal: { beforeWrite: arm.journalHook } });
      agent.setDesired(D2());
      const end = await runUntilCrashOrDone(agent, arm.crashed);
      await expectConverged(h, D2());
      await h.cleanup();
      h = undefined;
      if (end === 'done') break;
    }
    expect(k).toBeGreaterThan(10);
  });
});
