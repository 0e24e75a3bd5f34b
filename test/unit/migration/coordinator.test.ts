import { describe, expect, it } from 'vitest';
import { buildDesired } from '../../../src/agent/desired.js';
import { parseVmi } from '../../../src/api/vmi.js';
import { applySteps, intentOfRecord, planFinished, planMigration, stillHeldBy, type CoordinatorInput, type MigrationPlan } from '../../../src/migration/coordinator.js';
import type { MigrationJournal, MigrationState } from '../../../src/migration/schemas.js';
import type { RemoteDiskRef } from '../../../src/backend/remote.js';

const SRC = 'node-a';
const DST = 'node-b';
const disks: CoordinatorInput['disks'] = [
  { name: 'root', diskId: 'u1-root', source: { kind: 'local' }, readonly: false, queues: 2 },
  { name: 'data', diskId: 'u1-data', source: { kind: 'bdev', bdev: 'Nvme0n1' }, readonly: false },
];
const ref: RemoteDiskRef = { transport: 'nvmf-tcp', host: '10.0.0.1', port: 4420, adrfam: 'ipv4', subnqn: 'nqn.2024-01.io.kubevirt-spdk:u1-root', sizeBytes: 1 << 20 };
const running: MigrationState = { migrationUid: 'm1', sourceNode: SRC, targetNode: DST, targetPod: 'virt-launcher-x', mode: 'PreCopy', startTimestamp: '2024-01-01T00:00:00Z' };
const nothingHere: CoordinatorInput['here'] = { exported: {}, disks: {} };
const allReady: CoordinatorInput['here'] = { exported: {}, disks: { root: { phase: 'Ready' }, data: { phase: 'Ready' } } };

function input(node: string, state: MigrationState | undefined, journal?: MigrationJournal, over: Partial<CoordinatorInput> = {}): CoordinatorInput {
  return {
    node,
    state,
    disks,
    slot: node === SRC ? 'slot-01' : 'slot-07',
    backendCanMigrate: true,
    exportAddress: { kind: 'tcp', host: node === SRC ? '10.0.0.1' : '10.0.0.2', port: 4420 },
    sourceExports: { root: ref },
    here: nothingHere,
    journal,
    ...over,
  };
}

/** The journal once a plan's record updates are saved. */
const recorded = (p: MigrationPlan): MigrationJournal | undefined => p.journal && applySteps(p.journal, p.actions);
const types = (p: MigrationPlan): string[] => p.actions.map((a) => ('disk' in a ? `${a.type}:${a.disk}` : a.type));

/** The target: planned, then the agent serves every disk, then planned again. */
function targetServing(state = running): { first: MigrationPlan; served: MigrationPlan; journal: MigrationJournal | undefined } {
  const first = planMigration(input(DST, state));
  const served = planMigration(input(DST, state, recorded(first), { here: allReady }));
  return { first, served, journal: recorded(served) };
}

/** The source: planned, then the agent exported, then planned again. */
function sourceExporting(): MigrationJournal | undefined {
  const first = planMigration(input(SRC, running));
  return recorded(planMigration(input(SRC, running, recorded(first), { here: { exported: { root: ref }, disks: {} } })));
}

describe('migration planner', () => {
  it('does nothing without a migration or on an uninvolved node', () => {
    expect(planMigration(input(SRC, undefined)).actions).toEqual([]);
    expect(planMigration(input(SRC, undefined)).intent).toEqual({ exports: [], handedOver: false });
    const other = planMigration(input('node-c', running));
    expect(other.role).toBe('none');
    expect(other.actions).toEqual([]);
    expect(other.intent).toEqual({ exports: [], handedOver: false });
  });

  it('source exports only node-local disks, on its own address, and records (publishes) what the agent exported', () => {
    const p = planMigration(input(SRC, running));
    expect(p.role).toBe('source');
    expect(p.intent.exports).toEqual([{ disk: 'root', diskId: 'u1-root', address: { kind: 'tcp', host: '10.0.0.1', port: 4420 } }]);
    expect(p.actions).toEqual([]);
    expect(p.reason).toMatch(/waiting for this node to export disk\(s\) root/);
    const done = planMigration(input(SRC, running, recorded(p), { here: { exported: { root: ref }, disks: {} } }));
    expect(done.actions).toEqual([
      { type: 'recordExport', disk: 'root', ref },
      { type: 'setPhase', phase: 'ready' },
    ]);
    expect(recorded(done)?.exports).toEqual({ root: ref });
  });

  it('target serves the VMI from the attached export at the same <slot>/<disk> layout, then reports ready', () => {
    const { first, served, journal } = targetServing();
    expect(types(first)).toEqual(['recordAttached:root', 'recordAttached:data']);
    expect(first.intent.serve).toEqual({ attached: { root: { ref, node: SRC } } });
    expect(first.targetReady).toBe(false);
    // The node view that intent makes: root served from the source's export, data as declared, at slot-07.
    const vmi = parseVmi({
      metadata: { name: 'vm1', uid: 'u1', annotations: { 'kubevirt-spdk.io/volumes': '- {name: root, spdkVhostBlkDisk: {image: fedora, capacity: 1Gi, queues: 2}}\n- {name: data, spdkVhostBlkDisk: {bdev: Nvme0n1}}\n' } },
    });
    const desired = buildDesired({ vmis: [{ origin: 'vm1', vmi, slot: 'slot-07', ...(first.intent.serve ? { attached: first.intent.serve.attached } : {}) }], images: [] });
    expect(desired.vmis[0]?.disks.map((d) => [d.controller, d.source, d.queues])).toEqual([
      ['slot-07/root', { kind: 'attached', ref, node: SRC }, 2],
      ['slot-07/data', { kind: 'bdev', bdev: 'Nvme0n1' }, 1],
    ]);
    expect(types(served)).toEqual(['recordController:root', 'recordController:data', 'reportTargetReady', 'setPhase']);
    expect(served.actions[0]).toEqual({ type: 'recordController', disk: 'root', controller: 'slot-07/root' });
    expect(served.targetReady).toBe(true);
    const after = planMigration(input(DST, running, journal, { here: allReady }));
    expect(after.actions).toEqual([]);
    expect(after.targetReady).toBe(true);
  });

  it('target waits for the source export and for its slot, serving nothing meanwhile (no fresh clone in its place)', () => {
    const noExport = planMigration(input(DST, running, undefined, { sourceExports: undefined }));
    expect(noExport.intent.serve).toBeUndefined();
    expect(noExport.reason).toMatch(/waiting for the source node to export disk\(s\) root/);
    const noSlot = planMigration(input(DST, running, undefined, { slot: undefined }));
    expect(noSlot.actions).toEqual([]);
    expect(noSlot.intent.serve).toBeUndefined();
    expect(noSlot.reason).toMatch(/slot/);
  });

  it('success: source hands the VMI over but keeps exports and records the data node; target serves', () => {
    const done: MigrationState = { ...running, completed: true, endTimestamp: '2024-01-01T00:01:00Z' };
    const srcJ = sourceExporting();
    const src = planMigration(input(SRC, done, srcJ));
    expect(types(src)).toEqual(['recordDataNode:root', 'setPhase']);
    expect(src.intent).toEqual({ exports: [{ disk: 'root', diskId: 'u1-root', address: { kind: 'tcp', host: '10.0.0.1', port: 4420 } }], handedOver: true });
    const srcEnd = recorded(src);
    expect(srcEnd?.exports.root).toEqual(ref);
    expect(srcEnd?.dataNode).toEqual({ root: SRC });
    expect(srcEnd?.phase).toBe('handedOver');
    expect(planMigration(input(SRC, done, srcEnd)).actions).toEqual([]);
    // An agent that restarts before its first plan keeps the same intent from the record alone.
    expect(intentOfRecord(srcEnd as MigrationJournal, (d) => `u1-${d}`)).toEqual(src.intent);

    const dst = planMigration(input(DST, done, targetServing().journal));
    expect(types(dst)).toEqual(['recordDataNode:root', 'setPhase']);
    expect(dst.targetReady).toBe(true);
    expect(dst.intent.serve).toEqual({ attached: { root: { ref, node: SRC } } });
    expect(recorded(dst)?.phase).toBe('serving');
  });

  it.each([
    ['failed', { failed: true }],
    ['aborted', { abortStatus: 'Succeeded' as const, abortRequested: true }],
  ])('%s: target serves nothing (the reconciler tears down), source only stops exporting', (outcome, extra) => {
    const end: MigrationState = { ...running, ...extra };
    const dst = planMigration(input(DST, end, targetServing().journal));
    expect(dst.outcome).toBe(outcome);
    expect(types(dst)).toEqual(['forgetServed:root', 'forgetServed:data', 'setPhase']);
    expect(dst.intent).toEqual({ exports: [], handedOver: false });
    const dstEnd = recorded(dst);
    expect(dstEnd?.controllers).toEqual({});
    expect(planMigration(input(DST, end, dstEnd)).actions).toEqual([]);

    const src = planMigration(input(SRC, end, sourceExporting()));
    expect(types(src)).toEqual(['forgetExport:root', 'setPhase']);
    expect(src.intent).toEqual({ exports: [], handedOver: false });
  });

  it('failure at each phase of the target rolls back exactly what was recorded', () => {
    const { first, journal } = targetServing();
    for (const j of [undefined, recorded(first), journal]) {
      const rb = planMigration(input(DST, { ...running, failed: true }, j));
      const made = new Set([...Object.keys(j?.attached ?? {}), ...Object.keys(j?.controllers ?? {})]).size;
      expect(rb.actions.filter((a) => a.type === 'forgetServed')).toHaveLength(made);
      expect(rb.intent.serve).toBeUndefined();
      expect(recorded(rb)?.controllers).toEqual({});
      expect(recorded(rb)?.attached).toEqual({});
    }
  });

  it('an aborting migration is still running: nothing is torn down yet', () => {
    const j = targetServing().journal;
    const p = planMigration(input(DST, { ...running, abortRequested: true, abortStatus: 'Aborting' }, j, { here: allReady }));
    expect(p.outcome).toBe('running');
    expect(p.actions).toEqual([]);
    expect(p.intent.serve).toEqual({ attached: { root: { ref, node: SRC } } });
  });

  it('agent restart mid-migration: re-planning from the saved journal gives the same intent and ends where a run without restart ends', () => {
    const { first, journal: end } = targetServing();
    for (const saved0 of [undefined, recorded(first)]) {
      const saved = saved0 && (JSON.parse(JSON.stringify(saved0)) as MigrationJournal);
      const again = planMigration(input(DST, running, saved));
      // Same inputs, same plan (pure), and the same end.
      expect(planMigration(input(DST, running, saved))).toEqual(again);
      expect(again.intent).toEqual(first.intent);
      expect(recorded(planMigration(input(DST, running, recorded(again), { here: allReady })))).toEqual(end);
    }
  });

  it('a journal of an earlier migration does not leak into a new one', () => {
    const old = targetServing().journal;
    const p = planMigration(input(DST, { ...running, migrationUid: 'm2' }, old));
    expect(p.journal?.migrationUid).toBe('m2');
    expect(types(p)[0]).toBe('recordAttached:root');
  });

  it.each([
    ['mode PostCopy', { mode: 'PostCopy' as const }],
    ['a policy allowing post-copy', { migrationConfiguration: { allowPostCopy: true } }],
  ])('refuses %s on both nodes with a reason', (_what, extra) => {
    const s = { ...running, ...extra };
    const src = planMigration(input(SRC, s));
    expect(src.refused).toBe(true);
    expect(src.reason).toMatch(/pre-copy only/);
    expect(src.intent.exports).toEqual([]);
    const dst = planMigration(input(DST, s, recorded(planMigration(input(DST, running)))));
    expect(dst.refused).toBe(true);
    // What the target was serving before the refusal was noticed is given back.
    expect(types(dst)).toEqual(['forgetServed:root', 'forgetServed:data', 'setPhase']);
    expect(dst.intent.serve).toBeUndefined();
  });

  it('refuses a target or source whose backend cannot migrate node-local disks', () => {
    const dst = planMigration(input(DST, running, undefined, { backendCanMigrate: false }));
    expect(dst.refused).toBe(true);
    expect(dst.reason).toMatch(/cannot attach/);
    expect(dst.intent.serve).toBeUndefined();
    const src = planMigration(input(SRC, running, undefined, { backendCanMigrate: false }));
    expect(src.reason).toMatch(/cannot export/);
    // Shared volumes only: nothing to export, so any backend will do.
    const sharedOnly = planMigration(input(DST, running, undefined, { backendCanMigrate: false, disks: disks.filter((d) => d.source.kind === 'bdev') }));
    expect(sharedOnly.refused).toBe(false);
  });

  it('refuses when the source export could not be reached, naming the disk', () => {
    const j = recorded(planMigration(input(DST, running)));
    const p = planMigration(input(DST, running, j && { ...j, unreachable: { disk: 'root', message: 'connect: refused' } }));
    expect(p.refused).toBe(true);
    expect(p.reason).toBe("the source's export of disk root cannot be reached: connect: refused");
    // The agent reports the attach failed for that reason: recorded, refused, given back.
    const seen = planMigration(input(DST, running, j, { here: { exported: {}, disks: { root: { phase: 'Failed', message: 'export on node node-a unreachable: connect: refused' } } } }));
    expect(seen.refused).toBe(true);
    expect(seen.reason).toBe("the source's export of disk root cannot be reached: export on node node-a unreachable: connect: refused");
    expect(types(seen)[0]).toBe('recordUnreachable:root');
    expect(seen.intent.serve).toBeUndefined();
  });
});

describe('migration that moves the data (lazy clone, hydration after switchover)', () => {
  const done: MigrationState = { ...running, completed: true, endTimestamp: '2024-01-01T00:01:00Z' };
  const lazy = { backendCanClone: true };
  /** The target with a backend that clones: planned, served, and the migration succeeded. */
  function lazyTarget(): { served: MigrationJournal; after: MigrationPlan } {
    const first = planMigration(input(DST, running, undefined, lazy));
    const served = recorded(planMigration(input(DST, running, recorded(first), { ...lazy, here: allReady }))) as MigrationJournal;
    return { served, after: planMigration(input(DST, done, served, { ...lazy, here: allReady })) };
  }

  it('before switchover the target serves a clone that does not hydrate (the source QEMU still writes)', () => {
    const first = planMigration(input(DST, running, undefined, lazy));
    expect(first.actions).toContainEqual({ type: 'recordAttached', disk: 'root', attached: { kind: 'remote', ref, node: SRC, lazy: true } });
    expect(first.intent.serve).toEqual({ attached: { root: { ref, node: SRC, lazy: { migration: 'm1', hydrate: false } } } });
    const vmi = parseVmi({ metadata: { name: 'vm1', uid: 'u1', annotations: { 'kubevirt-spdk.io/volumes': '- {name: root, spdkVhostBlkDisk: {image: fedora, capacity: 1Gi}}\n' } } });
    const desired = buildDesired({ vmis: [{ origin: 'vm1', vmi, slot: 'slot-07', attached: first.intent.serve?.attached ?? {} }], images: [] });
    expect(desired.vmis[0]?.disks[0]?.source).toEqual({ kind: 'remote', ref, node: SRC, migration: 'm1', hydrate: false });
    // Aborting is still running: still no copy.
    const { served } = lazyTarget();
    const aborting = planMigration(input(DST, { ...running, abortRequested: true, abortStatus: 'Aborting' }, served, { ...lazy, here: allReady }));
    expect(aborting.intent.serve?.attached.root?.lazy).toEqual({ migration: 'm1', hydrate: false });
  });

  it('after success the clone hydrates; once it stands alone it is recorded, served as this node\'s own, and the data node moves here', () => {
    const { after } = lazyTarget();
    expect(after.intent.serve?.attached.root?.lazy).toEqual({ migration: 'm1', hydrate: true });
    expect(types(after)).toEqual(['recordDataNode:root', 'setPhase']);
    expect(recorded(after)?.dataNode).toEqual({ root: SRC });
    const serving = recorded(after) as MigrationJournal;
    // Still copying: nothing changes.
    const copying = { ...allReady, disks: { ...allReady.disks, root: { phase: 'Ready', migration: { phase: 'Hydrating', percent: 37 } } } };
    expect(planMigration(input(DST, done, serving, { ...lazy, here: copying })).actions).toEqual([]);
    const whole = { ...allReady, disks: { ...allReady.disks, root: { phase: 'Ready', migration: { phase: 'Hydrated', percent: 100 } } } };
    const hydrated = planMigration(input(DST, done, serving, { ...lazy, here: whole }));
    expect(types(hydrated)).toEqual(['recordHydrated:root', 'recordDataNode:root']);
    expect(recorded(hydrated)?.dataNode).toEqual({ root: DST });
    // The disk is no longer served from another node: its declared source again.
    expect(hydrated.intent.serve).toEqual({ attached: {} });
    expect(intentOfRecord(recorded(hydrated) as MigrationJournal, (d) => `u1-${d}`).serve).toEqual({ attached: {} });
  });

  it('a restarted target agent resumes hydration from its record alone, and never before switchover', () => {
    const { served, after } = lazyTarget();
    expect(intentOfRecord(served, (d) => `u1-${d}`).serve?.attached.root?.lazy?.hydrate).toBe(false);
    expect(intentOfRecord(recorded(after) as MigrationJournal, (d) => `u1-${d}`).serve?.attached.root?.lazy?.hydrate).toBe(true);
  });

  it('the source keeps each export until the target says the disk stands alone there, then lets go of it', () => {
    const srcJ = sourceExporting();
    const handed = recorded(planMigration(input(SRC, done, srcJ))) as MigrationJournal;
    expect(handed.exports.root).toEqual(ref);
    // Restarts of either side in between change nothing: without the target's word the export stays.
    expect(planMigration(input(SRC, done, handed, { targetHydrated: new Set() })).intent.exports.map((e) => e.disk)).toEqual(['root']);
    const released = planMigration(input(SRC, done, handed, { targetHydrated: new Set(['root']) }));
    expect(types(released)).toEqual(['recordDataNode:root', 'recordHydrated:root', 'forgetExport:root']);
    expect(released.intent).toEqual({ exports: [], handedOver: true });
    const end = recorded(released) as MigrationJournal;
    expect(end.dataNode).toEqual({ root: DST });
    expect(planMigration(input(SRC, done, end, { targetHydrated: new Set(['root']) })).actions).toEqual([]);
  });

  it('failure before switchover: the target serves nothing (its clones go), the source keeps serving', () => {
    const { served } = lazyTarget();
    const failed = planMigration(input(DST, { ...running, failed: true }, served, lazy));
    expect(failed.intent).toEqual({ exports: [], handedOver: false });
    expect(recorded(failed)?.attached).toEqual({});
  });

  it('a backend that cannot clone attaches as before (the data stays on the source), and a recorded choice is kept', () => {
    const first = planMigration(input(DST, running, undefined, { backendCanClone: false }));
    expect(first.intent.serve).toEqual({ attached: { root: { ref, node: SRC } } });
    const attachedJ = recorded(first) as MigrationJournal;
    // Not swapped for a clone mid-migration (say, after an upgrade).
    expect(planMigration(input(DST, running, attachedJ, lazy)).actions.filter((a) => a.type === 'recordAttached')).toEqual([]);
  });

  it('A -> B -> A: an earlier migration still holding the node makes the new one wait (target) or refuses it (source)', () => {
    const { after } = lazyTarget();
    const stillCopying = recorded(after) as MigrationJournal;
    expect(stillHeldBy(stillCopying)).toMatch(/root still read from node-a/);
    const back: MigrationState = { migrationUid: 'm2', sourceNode: DST, targetNode: SRC, mode: 'PreCopy' };
    // B (source of m2) while its disk still copies from A: refused, nothing exported.
    const bSource = planMigration(input(DST, back, undefined, { blockedBy: stillHeldBy(stillCopying) }));
    expect(bSource.refused).toBe(true);
    expect(bSource.intent.exports).toEqual([]);
    // The earlier migration is finished beside it: B goes on hydrating.
    const prev = planFinished({ ...input(DST, undefined), ...lazy, here: { exported: {}, disks: { root: { phase: 'Ready', migration: { phase: 'Hydrated' } } } } }, stillCopying);
    expect(types(prev)).toEqual(['recordHydrated:root', 'recordDataNode:root']);
    expect(stillHeldBy(applySteps(stillCopying, prev.actions))).toBeUndefined();

    // A (target of m2) while its export of m1 is still read: waits, serves nothing.
    const aOld = recorded(planMigration(input(SRC, done, sourceExporting()))) as MigrationJournal;
    const aWait = planMigration(input(SRC, back, undefined, { ...lazy, slot: 'slot-02', sourceExports: { root: ref }, blockedBy: stillHeldBy(aOld) }));
    expect(aWait.intent.serve).toBeUndefined();
    expect(aWait.reason).toMatch(/waiting: the previous migration \(m1\) still reads disk\(s\) root/);
    // Released but its old disk not yet deleted: still waits (an earlier copy is never served as the clone).
    const aGone = planFinished({ ...input(SRC, undefined), targetHydrated: new Set(['root']) }, aOld);
    expect(stillHeldBy(applySteps(aOld, aGone.actions))).toBeUndefined();
    const aCopy = planMigration(input(SRC, back, undefined, { ...lazy, slot: 'slot-02', sourceExports: { root: ref }, here: { exported: {}, disks: {}, earlierCopies: ['root'] } }));
    expect(aCopy.intent.serve).toBeUndefined();
    expect(aCopy.reason).toMatch(/earlier copy of disk\(s\) root/);
    const aGo = planMigration(input(SRC, back, undefined, { ...lazy, slot: 'slot-02', sourceExports: { root: ref } }));
    expect(aGo.intent.serve?.attached.root).toEqual({ ref, node: DST, lazy: { migration: 'm2', hydrate: false } });
  });

  it('a disk served from another node\'s export for good (no copy) cannot migrate again: said so', () => {
    const first = planMigration(input(DST, running, undefined, { backendCanClone: false }));
    const attachedJ = recorded(planMigration(input(DST, done, recorded(first), { here: allReady }))) as MigrationJournal;
    expect(stillHeldBy(attachedJ)).toMatch(/root are served from node-a's export .* cannot migrate again/);
  });

  it('post-copy is still refused', () => {
    expect(planMigration(input(DST, { ...running, mode: 'PostCopy' }, undefined, lazy)).refused).toBe(true);
  });
});
