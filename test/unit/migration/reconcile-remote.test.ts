import { afterEach, describe, expect, it } from 'vitest';
import { buildDesired, type DesiredState } from '../../../src/agent/desired.js';
import { emptyJournalState, type JournalState } from '../../../src/agent/journal.js';
import { reconcile, type Action, type AgentMemory, type ReconcileConfig } from '../../../src/agent/reconcile.js';
import { reportOf } from '../../../src/agent/report.js';
import type { RemoteDiskRef } from '../../../src/backend/remote.js';
import { BackendError, type DiskHydration, type ObservedDisk, type ObservedState } from '../../../src/backend/types.js';
import { controllerName, diskId } from '../../../src/contract/index.js';
import { FakeBackend } from '../../helpers/fake-backend.js';
import { harness, image, testSocket, vmi, type Harness } from '../agent/fixtures.js';

/**
 * A migrating disk on its target, as the one reconciler plans it (pure) and the executor carries
 * it out (against a fake backend with the port's cloneRemoteDisk/hydrateDisk): a clone of the
 * source's export, hydrated only when its source says so, reported with phase and percent.
 */

const policy = { uid: 107, gid: 107, mode: 0o660 };
const config: ReconcileConfig = { socket: policy, orphanGraceMs: 60_000, cache: {} };
const ID = diskId('uid-a', 'root');
const REF: RemoteDiskRef = { transport: 'nbd', address: { kind: 'unix', path: '/run/a.sock' }, exportName: ID, sizeBytes: 2 ** 30 };
const A = vmi('a', undefined, [{ name: 'root', image: 'fedora' }]);
const CTL = controllerName('slot-05', 'root');

/** VMI a served at slot-05 from node-a's export as a lazy clone. */
const cloned = (hydrate: boolean, migration = 'm1'): DesiredState =>
  buildDesired({ vmis: [{ origin: 'a', vmi: A, slot: 'slot-05', attached: { root: { ref: REF, node: 'node-a', lazy: { migration, hydrate } } } }], images: [image('fedora')] });
const own = (): DesiredState => buildDesired({ vmis: [{ origin: 'a', vmi: A, slot: 'slot-05' }], images: [image('fedora')] });
const obs = (o: Partial<ObservedState> = {}): ObservedState => ({ images: [], disks: [], controllers: [], ...o });
const cloneDisk = (): ObservedDisk => ({ id: ID, ref: `/disks/${ID}.qcow2`, sizeBytes: 2 ** 30, dependents: 0, owned: true });
const owned = (source: JournalState['owned'][string]['source'], migration?: string): JournalState => ({
  ...emptyJournalState(),
  owned: { [ID]: { vmi: { namespace: 'default', name: 'a', uid: 'uid-a' }, disk: 'root', slot: 'slot-05', controller: CTL, source, ...(migration ? { migration } : {}), createdAt: 1 } },
});
const memory = (journal = emptyJournalState(), ready = false): AgentMemory => ({
  journal,
  now: 1,
  failed: new Map(),
  sockets: ready ? new Map([[`/vhost/${CTL}`, policy]]) : new Map(),
});
const kinds = (plan: Action[]): string[] => plan.map((a) => a.kind);
const serving = obs({ disks: [cloneDisk()], controllers: [{ name: CTL, diskRef: `/disks/${ID}.qcow2`, readonly: false, socketPath: `/vhost/${CTL}`, sessions: 1 }] });

describe('reconcile: a migrating disk', () => {
  it('before switchover: clone, controller, socket; no hydration', () => {
    const plan = reconcile(cloned(false), obs(), memory(), config);
    expect(kinds(plan)).toEqual(['cloneDisk', 'ensureController', 'fixSocket']);
    expect(plan[0]).toMatchObject({ kind: 'cloneDisk', id: ID, ref: REF, node: 'node-a', migration: 'm1' });
    // Served and converged: nothing but ready.
    expect(kinds(reconcile(cloned(false), serving, memory(owned('remote', 'm1'), true), config))).toEqual(['reportReady']);
  });

  it('after switchover: the served clone hydrates (a follow-up of the ready disk), never re-cloned', () => {
    expect(kinds(reconcile(cloned(true), serving, memory(owned('remote', 'm1'), true), config))).toEqual(['reportReady', 'hydrateDisk']);
  });

  it('once hydrated the disk is this node\'s own: served as it is, its image not fetched', () => {
    expect(kinds(reconcile(own(), serving, memory(owned('remote', 'm1'), true), config))).toEqual(['reportReady']);
  });

  it('an earlier copy of the same disk id (A -> B -> A) is never served as the clone', () => {
    for (const j of [owned('image'), owned('remote', 'm0')]) {
      const plan = reconcile(cloned(false), obs({ disks: [cloneDisk()] }), memory(j), config);
      expect(kinds(plan)).toEqual(['reportError']);
      expect(plan[0]).toMatchObject({ message: expect.stringMatching(/earlier copy/) });
    }
  });

  it('rollback: a clone no desired disk wants, of a VMI gone from this node, is deleted (it is owned)', () => {
    const empty = buildDesired({ vmis: [], images: [] });
    const plan = reconcile(empty, obs({ disks: [cloneDisk()] }), memory(owned('remote', 'm1')), config);
    expect(plan.filter((a) => a.kind === 'deleteDisk')).toEqual([{ kind: 'deleteDisk', id: ID, reason: 'VMI default/a is gone' }]);
  });

  it('the status shows the phase, the percent and where the data is', () => {
    const d = cloned(true);
    const plan: Action[] = [{ kind: 'reportReady', target: { key: `uid-a/root`, vmi: d.vmis[0]!.ref, disk: 'root', slot: 'slot-05' }, socket: '/s' }];
    const at = (h: DiskHydration | undefined) =>
      reportOf('t', d, plan, new Map(h ? [['uid-a/root', { phase: 'Provisioning' as const, permanent: false, hydration: h }]] : []), { passes: 1, converged: true, controllersCreated: 0, durationMs: 0, node: 'node-b' }).vmis[0]?.disks[0];
    expect(at({ id: ID, state: 'hydrating', percent: 37.6 })).toMatchObject({ phase: 'Ready', dataNode: 'node-a', migration: { phase: 'Hydrating', from: 'node-a', percent: 37 } });
    expect(at({ id: ID, state: 'paused', percent: 40, message: 'connect refused' })).toMatchObject({ migration: { phase: 'Paused', percent: 40 }, message: expect.stringMatching(/paused .*connect refused/) });
    expect(at({ id: ID, state: 'standalone', percent: 100 })).toMatchObject({ dataNode: 'node-b', migration: { phase: 'Hydrated', percent: 100 } });
    const before = reportOf('t', cloned(false), plan, new Map(), { passes: 1, converged: true, controllersCreated: 0, durationMs: 0, node: 'node-b' }).vmis[0]?.disks[0];
    expect(before).toMatchObject({ dataNode: 'node-a', migration: { phase: 'Cloned', from: 'node-a', percent: 0 } });
    // The fallback says the data stays where it is.
    const attached = buildDesired({ vmis: [{ origin: 'a', vmi: A, slot: 'slot-05', attached: { root: { ref: REF, node: 'node-a' } } }], images: [] });
    const att = reportOf('t', attached, plan, new Map(), { passes: 1, converged: true, controllersCreated: 0, durationMs: 0, node: 'node-b' }).vmis[0]?.disks[0];
    expect(att).toMatchObject({ dataNode: 'node-a', migration: { phase: 'Attached' }, message: expect.stringMatching(/data stays there/) });
  });
});

/** A fake backend whose remote clones hydrate in steps of `step` percent per hydrateDisk call. */
class LazyFake extends FakeBackend {
  readonly clones = new Map<string, number>();
  unreachable = false;
  step = 50;
  async cloneRemoteDisk(ref: RemoteDiskRef, id: string): Promise<ObservedDisk> {
    this.calls.push(`cloneRemoteDisk ${id}`);
    if (this.unreachable) throw new BackendError(`disk ${id}: export unreachable`, 'transport');
    const d = { id, ref: `clone-${id}`, sizeBytes: ref.sizeBytes, dependents: 0, owned: true, capacity: ref.sizeBytes };
    this.disks.set(id, d);
    this.bdevs.add(d.ref);
    if (!this.clones.has(id)) this.clones.set(id, 0);
    return d;
  }
  async hydrateDisk(id: string): Promise<DiskHydration> {
    this.calls.push(`hydrateDisk ${id}`);
    if (this.unreachable) throw new BackendError(`disk ${id}: source unreachable`, 'transport');
    const p = Math.min(100, (this.clones.get(id) ?? 100) + this.step);
    this.clones.set(id, p);
    return { id, state: p >= 100 ? 'standalone' : 'hydrating', percent: p };
  }
}

let h: Harness | undefined;
afterEach(async () => {
  await h?.agent.stop();
  await h?.cleanup();
  h = undefined;
});

describe('the agent carries a migrating disk out', () => {
  it('clones (journaled as owned, for this migration), serves, and hydrates only once asked, one step per round', async () => {
    h = await harness();
    const backend = new LazyFake(h.backend.vhostDir);
    const agent = await h.newAgent({ backend, stateDir: `${h.dir}/lazy`, socket: testSocket, node: 'node-b' });
    agent.setDesired(cloned(false));
    const r1 = await agent.reconcile('t');
    expect(r1.vmis[0]?.disks[0]).toMatchObject({ phase: 'Ready', migration: { phase: 'Cloned' } });
    expect(agent.ownedNow()[ID]).toMatchObject({ source: 'remote', migration: 'm1' });
    expect(backend.calls.filter((c) => c.startsWith('hydrateDisk'))).toEqual([]);

    agent.setDesired(cloned(true));
    const r2 = await agent.reconcile('t');
    expect(r2.converged).toBe(true);
    expect(r2.vmis[0]?.disks[0]).toMatchObject({ phase: 'Ready', dataNode: 'node-a', migration: { phase: 'Hydrating', percent: 50 } });
    // A source that went away pauses the copy; the disk stays Ready.
    backend.unreachable = true;
    const r3 = await agent.reconcile('t');
    expect(r3.vmis[0]?.disks[0]).toMatchObject({ phase: 'Ready', migration: { phase: 'Paused' } });
    backend.unreachable = false;
    const r4 = await agent.reconcile('t');
    expect(r4.vmis[0]?.disks[0]).toMatchObject({ phase: 'Ready', dataNode: 'node-b', migration: { phase: 'Hydrated', percent: 100 } });
    expect(backend.calls.filter((c) => c.startsWith('cloneRemoteDisk'))).toEqual([`cloneRemoteDisk ${ID}`]);
    await agent.stop();
  });

  it('an unreachable export fails the disk for the round with "unreachable" (the planner refuses on it)', async () => {
    h = await harness();
    const backend = new LazyFake(h.backend.vhostDir);
    backend.unreachable = true;
    const agent = await h.newAgent({ backend, stateDir: `${h.dir}/lazy`, socket: testSocket, node: 'node-b' });
    agent.setDesired(cloned(false));
    const r = await agent.reconcile('t');
    expect(r.vmis[0]?.disks[0]).toMatchObject({ phase: 'Failed', message: expect.stringMatching(/unreachable/) });
    await agent.stop();
  });
});
