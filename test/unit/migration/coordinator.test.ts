import { describe, expect, it } from 'vitest';
import { planMigration, type CoordinatorInput, type MigrationAction, type MigrationPlan } from '../../../src/migration/coordinator.js';
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

function input(node: string, state: MigrationState | undefined, journal?: MigrationJournal, over: Partial<CoordinatorInput> = {}): CoordinatorInput {
  return {
    node,
    state,
    disks,
    slot: node === SRC ? 'slot-01' : 'slot-07',
    backendCanMigrate: true,
    exportAddress: { kind: 'tcp', host: node === SRC ? '10.0.0.1' : '10.0.0.2', port: 4420 },
    sourceExports: { root: ref },
    journal,
    ...over,
  };
}

/** Applies a plan's bookkeeping the way the executor would, assuming every action succeeds. */
function simulate(p: MigrationPlan, upTo = Infinity): MigrationJournal | undefined {
  let j = p.journal;
  if (!j) return j;
  for (const a of p.actions.slice(0, upTo)) {
    switch (a.type) {
      case 'export':
        j = { ...j, exports: { ...j.exports, [a.disk]: ref } };
        break;
      case 'unexport': {
        const { [a.disk]: _x, ...rest } = j.exports;
        j = { ...j, exports: rest };
        break;
      }
      case 'attachRemote':
        j = { ...j, attached: { ...j.attached, [a.disk]: { diskRef: 'mig-u1-rootn1', kind: 'remote' } } };
        break;
      case 'openShared':
        j = { ...j, attached: { ...j.attached, [a.disk]: { diskRef: a.bdev, kind: 'shared' } } };
        break;
      case 'createController':
        j = { ...j, controllers: { ...j.controllers, [a.disk]: a.controller } };
        break;
      case 'deleteController':
        if (j.role === 'target') {
          const { [a.disk]: _x, ...rest } = j.controllers;
          j = { ...j, controllers: rest };
        } else j = { ...j, controllers: { ...j.controllers, [a.disk]: a.controller } };
        break;
      case 'detachRemote': {
        const { [a.disk]: _x, ...rest } = j.attached;
        j = { ...j, attached: rest };
        break;
      }
      case 'recordDataNode':
        j = { ...j, dataNode: { ...j.dataNode, [a.disk]: a.node } };
        break;
      case 'setPhase':
        j = { ...j, phase: a.phase };
        break;
      case 'reportTargetReady':
        break;
    }
  }
  return j;
}

const types = (p: MigrationPlan): string[] => p.actions.map((a) => (('disk' in a ? `${a.type}:${a.disk}` : a.type)));

describe('migration coordinator', () => {
  it('does nothing without a migration or on an uninvolved node', () => {
    expect(planMigration(input(SRC, undefined)).actions).toEqual([]);
    const other = planMigration(input('node-c', running));
    expect(other.role).toBe('none');
    expect(other.actions).toEqual([]);
  });

  it('source exports only node-local disks, on its own address', () => {
    const p = planMigration(input(SRC, running));
    expect(p.role).toBe('source');
    expect(p.actions).toEqual<MigrationAction[]>([
      { type: 'export', disk: 'root', diskId: 'u1-root', address: { kind: 'tcp', host: '10.0.0.1', port: 4420 } },
      { type: 'setPhase', phase: 'ready' },
    ]);
  });

  it('target attaches, creates controllers at the same <slot>/<disk> layout, then reports ready', () => {
    const p = planMigration(input(DST, running));
    expect(types(p)).toEqual(['attachRemote:root', 'createController:root', 'openShared:data', 'createController:data', 'reportTargetReady', 'setPhase']);
    expect(p.actions[1]).toEqual({ type: 'createController', disk: 'root', controller: 'slot-07/root', readonly: false, queues: 2 });
    expect(p.targetReady).toBe(false);
    const after = planMigration(input(DST, running, simulate(p)));
    expect(after.actions).toEqual([]);
    expect(after.targetReady).toBe(true);
  });

  it('target waits for the source export and for its slot, making only what it can', () => {
    const noExport = planMigration(input(DST, running, undefined, { sourceExports: undefined }));
    expect(types(noExport)).toEqual(['openShared:data', 'createController:data']);
    expect(noExport.reason).toMatch(/waiting for the source node to export disk\(s\) root/);
    const noSlot = planMigration(input(DST, running, undefined, { slot: undefined }));
    expect(noSlot.actions).toEqual([]);
    expect(noSlot.reason).toMatch(/slot/);
  });

  it('success: source gives up its controllers but keeps exports and records the data node; target serves', () => {
    const done: MigrationState = { ...running, completed: true, endTimestamp: '2024-01-01T00:01:00Z' };
    const srcJ = simulate(planMigration(input(SRC, running)));
    const src = planMigration(input(SRC, done, srcJ));
    expect(types(src)).toEqual(['recordDataNode:root', 'deleteController:root', 'deleteController:data', 'setPhase']);
    expect(src.actions.some((a) => a.type === 'unexport')).toBe(false);
    const srcEnd = simulate(src);
    expect(srcEnd?.exports.root).toEqual(ref);
    expect(srcEnd?.dataNode).toEqual({ root: SRC });
    expect(planMigration(input(SRC, done, srcEnd)).actions).toEqual([]);

    const dstJ = simulate(planMigration(input(DST, running)));
    const dst = planMigration(input(DST, done, dstJ));
    expect(types(dst)).toEqual(['recordDataNode:root', 'setPhase']);
    expect(dst.targetReady).toBe(true);
    expect(simulate(dst)?.phase).toBe('serving');
  });

  it.each([
    ['failed', { failed: true }],
    ['aborted', { abortStatus: 'Succeeded' as const, abortRequested: true }],
  ])('%s: target tears down what it made, source only drops its exports', (outcome, extra) => {
    const end: MigrationState = { ...running, ...extra };
    const dstJ = simulate(planMigration(input(DST, running)));
    const dst = planMigration(input(DST, end, dstJ));
    expect(dst.outcome).toBe(outcome);
    expect(types(dst)).toEqual(['deleteController:root', 'deleteController:data', 'detachRemote:root', 'setPhase']);
    const dstEnd = simulate(dst);
    expect(dstEnd?.controllers).toEqual({});
    expect(planMigration(input(DST, end, dstEnd)).actions).toEqual([]);

    const srcJ = simulate(planMigration(input(SRC, running)));
    const src = planMigration(input(SRC, end, srcJ));
    expect(types(src)).toEqual(['unexport:root', 'setPhase']);
    expect(src.actions.some((a) => a.type === 'deleteController')).toBe(false);
  });

  it('failure at each phase of the target rolls back exactly what exists', () => {
    const full = planMigration(input(DST, running));
    for (let k = 0; k <= full.actions.length; k++) {
      const j = simulate(full, k);
      const rb = planMigration(input(DST, { ...running, failed: true }, j));
      const made = Object.keys(j?.controllers ?? {}).length + Object.values(j?.attached ?? {}).filter((a) => a.kind === 'remote').length;
      expect(rb.actions.filter((a) => a.type === 'deleteController' || a.type === 'detachRemote')).toHaveLength(made);
      expect(simulate(rb)?.controllers).toEqual({});
    }
  });

  it('an aborting migration is still running: nothing is torn down yet', () => {
    const j = simulate(planMigration(input(DST, running)));
    const p = planMigration(input(DST, { ...running, abortRequested: true, abortStatus: 'Aborting' }, j));
    expect(p.outcome).toBe('running');
    expect(p.actions).toEqual([]);
  });

  it('agent restart mid-migration: re-planning from the saved journal gives the remaining actions', () => {
    const first = planMigration(input(DST, running));
    for (let k = 0; k < first.actions.length; k++) {
      const saved = JSON.parse(JSON.stringify(simulate(first, k))) as MigrationJournal;
      const again = planMigration(input(DST, running, saved));
      // Same inputs, same plan (pure), and it ends where a run without restart ends.
      expect(planMigration(input(DST, running, saved))).toEqual(again);
      expect(simulate(again)).toEqual(simulate(first));
    }
  });

  it('a journal of an earlier migration does not leak into a new one', () => {
    const old = simulate(planMigration(input(DST, running)));
    const p = planMigration(input(DST, { ...running, migrationUid: 'm2' }, old));
    expect(p.journal?.migrationUid).toBe('m2');
    expect(types(p)[0]).toBe('attachRemote:root');
  });

  it.each([
    ['mode PostCopy', { mode: 'PostCopy' as const }],
    ['a policy allowing post-copy', { migrationConfiguration: { allowPostCopy: true } }],
  ])('refuses %s on both nodes with a reason', (_what, extra) => {
    const s = { ...running, ...extra };
    const src = planMigration(input(SRC, s));
    expect(src.refused).toBe(true);
    expect(src.reason).toMatch(/pre-copy only/);
    expect(src.actions.filter((a) => a.type === 'export')).toEqual([]);
    const dst = planMigration(input(DST, s, simulate(planMigration(input(DST, running)), 2)));
    expect(dst.refused).toBe(true);
    // What the target made before the refusal was noticed is given back.
    expect(types(dst)).toEqual(['deleteController:root', 'detachRemote:root', 'setPhase']);
  });

  it('refuses a target or source whose backend cannot migrate node-local disks', () => {
    const dst = planMigration(input(DST, running, undefined, { backendCanMigrate: false }));
    expect(dst.refused).toBe(true);
    expect(dst.reason).toMatch(/cannot attach/);
    expect(dst.actions.some((a) => a.type === 'createController')).toBe(false);
    const src = planMigration(input(SRC, running, undefined, { backendCanMigrate: false }));
    expect(src.reason).toMatch(/cannot export/);
    // Shared volumes only: nothing to export, so any backend will do.
    const sharedOnly = planMigration(input(DST, running, undefined, { backendCanMigrate: false, disks: disks.filter((d) => d.source.kind === 'bdev') }));
    expect(sharedOnly.refused).toBe(false);
  });

  it('refuses when the source export could not be reached, naming the disk', () => {
    const j = simulate(planMigration(input(DST, running)), 0);
    const p = planMigration(input(DST, running, j && { ...j, unreachable: { disk: 'root', message: 'connect: refused' } }));
    expect(p.refused).toBe(true);
    expect(p.reason).toBe("the source's export of disk root cannot be reached: connect: refused");
  });
});
