import type { KubernetesObject } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { diskId } from '../../../src/contract/index.js';
import type { RemoteDiskRef } from '../../../src/backend/remote.js';
import { clusterDesired } from '../../../src/kube/mapping.js';
import { exportAddressOf, exportEntriesOf, exportsOn, factsOf, needsAbort, nodeIntentOf, outcomeToReport, type ExportEntry, type MigrationRecord } from '../../../src/kube/migration.js';
import { applySteps, freshJournal, planMigration } from '../../../src/migration/coordinator.js';
import type { MigrationJournal } from '../../../src/migration/schemas.js';

const UID = 'u1';
const VOLUMES = '- name: root\n  spdkVhostBlkDisk: {image: fedora, capacity: 1Gi, queues: 2, bootOrder: 1}\n- name: data\n  spdkVhostBlkDisk: {bdev: Nvme0n1}\n';
const ref: RemoteDiskRef = { transport: 'nvmf-tcp', host: '10.0.0.1', port: 4420, adrfam: 'ipv4', subnqn: `nqn.2024-01.io.kubevirt-spdk:${diskId(UID, 'root')}`, sizeBytes: 1 << 30 };
const running = { migrationUid: 'm1', sourceNode: 'a', targetNode: 'b', targetPod: 'virt-launcher-t', mode: 'PreCopy' };

function vmi(labels: Record<string, string>, migrationState?: object, annotations: Record<string, string> = {}): KubernetesObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'vm1', namespace: 'default', uid: UID, labels, annotations: { 'kubevirt-spdk.io/volumes': VOLUMES, ...annotations } },
    ...(migrationState ? { status: { migrationState } } : {}),
  } as KubernetesObject;
}

const record = (journal: MigrationJournal, over: Partial<MigrationRecord> = {}): MigrationRecord => ({ vmi: { namespace: 'default', name: 'vm1', uid: UID }, sourceNode: 'a', journal, ...over });

/** A node's NodeImageCache listing migration exports (what a source agent writes). */
const cacheOf = (node: string, migrationExports: unknown) => ({ metadata: { name: node }, status: { migrationExports } });

describe('VMI -> migration facts', () => {
  it('reads state and disks (local vs shared bdev)', () => {
    const f = factsOf(vmi({}, running));
    if ('problem' in f) throw new Error(f.problem);
    expect(f.state?.targetNode).toBe('b');
    expect(f.disks).toEqual([
      { name: 'root', diskId: diskId(UID, 'root'), source: { kind: 'local' }, readonly: false, queues: 2 },
      { name: 'data', diskId: diskId(UID, 'data'), source: { kind: 'bdev', bdev: 'Nvme0n1' }, readonly: false, queues: 1 },
    ]);
  });

  it('names the field when migrationState is malformed instead of throwing', () => {
    const f = factsOf(vmi({}, { mode: 'Sideways' }));
    expect(f).toHaveProperty('problem');
    expect((f as { problem: string }).problem).toMatch(/mode/);
  });
});

describe('publishing exports', () => {
  it('the target reads the exports of its VMI\'s current migration from the source node\'s NodeImageCache only', () => {
    const e = (over: Partial<ExportEntry> = {}): ExportEntry => ({ vmi: UID, migration: 'm1', disk: 'root', ref, ...over });
    const caches = [cacheOf('a', [e(), e({ migration: 'm0', ref: { ...ref, host: '10.9.9.9' } }), e({ vmi: 'u2', disk: 'data' })]), cacheOf('c', [e({ disk: 'data' })])];
    expect(exportsOn(caches, 'a', UID, 'm1')).toEqual({ root: ref });
    expect(exportsOn(caches, 'a', UID, 'm2')).toBeUndefined();
    expect(exportsOn(caches, 'c', UID, 'm1')).toEqual({ data: ref });
    expect(exportsOn(caches, undefined, UID, 'm1')).toBeUndefined();
    expect(exportsOn([cacheOf('a', 'not a list')], 'a', UID, 'm1')).toBeUndefined();
    expect(exportsOn([cacheOf('a', [{ ...e(), ref: { transport: 'nvmf-tcp' } }])], 'a', UID, 'm1')).toBeUndefined();
  });

  it('a source publishes what its journal exports, and nothing once it exports nothing', () => {
    const j = { ...freshJournal('m1', 'source'), exports: { root: ref } };
    expect(exportsOn([cacheOf('a', exportEntriesOf(UID, j))], 'a', UID, 'm1')).toEqual({ root: ref });
    expect(exportEntriesOf(UID, { ...j, exports: {} })).toEqual([]);
    expect(exportEntriesOf(UID, { ...freshJournal('m1', 'target'), exports: { root: ref } })).toEqual([]);
  });

  it('a scripted migration: what the source publishes is what the target attaches', () => {
    const src = factsOf(vmi({}, running));
    if ('problem' in src) throw new Error(src.problem);
    const base = { disks: src.disks, backendCanMigrate: true, exportAddress: { kind: 'tcp' as const, host: '10.0.0.1', port: 4420 } };
    const sPlan = planMigration({ ...base, node: 'a', state: src.state, slot: 'slot-01', sourceExports: undefined, here: { exported: {}, disks: {} }, journal: undefined });
    expect(sPlan.intent.exports.map((e) => e.diskId)).toEqual([diskId(UID, 'root')]);
    // The agent exports; the planner records it; the agent publishes the record in node a's NodeImageCache.
    const sDone = planMigration({ ...base, node: 'a', state: src.state, slot: 'slot-01', sourceExports: undefined, here: { exported: { root: ref }, disks: {} }, journal: sPlan.journal });
    const sJournal = applySteps(sDone.journal!, sDone.actions);
    expect(sJournal.exports).toEqual({ root: ref });
    const sourceExports = exportsOn([cacheOf('a', exportEntriesOf(UID, sJournal))], 'a', UID, 'm1');
    const tPlan = planMigration({ ...base, node: 'b', state: src.state, slot: 'slot-05', sourceExports, here: { exported: {}, disks: {} }, journal: undefined });
    expect(tPlan.actions).toContainEqual({ type: 'recordAttached', disk: 'root', attached: { kind: 'remote', ref, node: 'a' } });
    expect(tPlan.actions).toContainEqual({ type: 'recordAttached', disk: 'data', attached: { kind: 'shared', bdev: 'Nvme0n1' } });
    const ready = { root: { phase: 'Ready' }, data: { phase: 'Ready' } };
    const tServed = planMigration({ ...base, node: 'b', state: src.state, slot: 'slot-05', sourceExports, here: { exported: {}, disks: ready }, journal: applySteps(tPlan.journal!, tPlan.actions) });
    expect(tServed.actions.at(-2)).toEqual({ type: 'reportTargetReady', slot: 'slot-05' });
  });
});

/** The node's desired state from the informers, PodResources and the records (as cluster.ts builds it). */
function desiredOn(node: string, onNode: KubernetesObject[], targets: KubernetesObject[], records: Map<string, MigrationRecord>, slot = 'slot-05') {
  const pods = [{ metadata: { name: 'launcher', namespace: 'default', labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': UID } }, spec: { nodeName: node }, status: { phase: 'Running' } }];
  const podSlots = [{ namespace: 'default', pod: 'launcher', container: 'compute', slot }];
  const migration = nodeIntentOf(node, onNode, records, new Map());
  return { desired: clusterDesired({ vmis: onNode, migrationTargets: targets, migration, pods, podSlots, cachedImages: [fedora] }).desired, migration };
}
const fedora = { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name: 'fedora' }, spec: { source: { http: { url: 'http://127.0.0.1/f.raw' } }, format: 'raw', size: '1Gi' } };

describe('the desired state during and after a migration', () => {
  const attached: MigrationJournal = {
    ...freshJournal('m1', 'target'),
    attached: { root: { kind: 'remote', ref, node: 'a' }, data: { kind: 'shared', bdev: 'Nvme0n1' } },
  };

  it('target: a migrating VMI joins only once every disk is attached, served from the source\'s export', () => {
    const t = vmi({ 'kubevirt.io/migrationTargetNodeName': 'b' }, running);
    expect(desiredOn('b', [], [t], new Map()).desired.vmis).toEqual([]);
    const [v] = desiredOn('b', [], [t], new Map([[UID, record(attached)]])).desired.vmis;
    expect(v?.slot).toBe('slot-05');
    expect(v?.disks.map((d) => [d.name, d.source, d.capacityBytes])).toEqual([
      ['root', { kind: 'attached', ref, node: 'a' }, undefined],
      ['data', { kind: 'bdev', bdev: 'Nvme0n1' }, undefined],
    ]);
    expect(v?.disks[0]).toMatchObject({ queues: 2, controller: 'slot-05/root', id: diskId(UID, 'root') });
  });

  it('target after success: the VMI on this node stays served from the source; rolled back: served as declared', () => {
    const done = vmi({ 'kubevirt.io/nodeName': 'b' }, { ...running, completed: true });
    const served = desiredOn('b', [done], [], new Map([[UID, record(attached)]])).desired.vmis[0]?.disks[0];
    expect(served?.source).toEqual({ kind: 'attached', ref, node: 'a' });
    const rolledBack = { ...attached, attached: {}, phase: 'rolledBack' as const };
    expect(desiredOn('b', [done], [], new Map([[UID, record(rolledBack)]])).desired.vmis[0]?.disks[0]?.source).toEqual({ kind: 'image', image: 'fedora' });
  });

  it('source: the VMI leaves the desired state once the migration succeeded, not before, not after a failure', () => {
    expect(desiredOn('a', [vmi({ 'kubevirt.io/nodeName': 'a' }, running)], [], new Map(), 'slot-01').desired.vmis).toHaveLength(1);
    expect(desiredOn('a', [vmi({ 'kubevirt.io/nodeName': 'a' }, { ...running, failed: true })], [], new Map(), 'slot-01').desired.vmis).toHaveLength(1);
    expect(desiredOn('a', [vmi({ 'kubevirt.io/nodeName': 'a' }, { ...running, completed: true })], [], new Map(), 'slot-01').desired.vmis).toEqual([]);
  });

  it('exports are desired state: a handed-over source keeps exporting (and so keeps) its disk; a rolled-back one does not', () => {
    const src = record({ ...freshJournal('m1', 'source'), exports: { root: ref }, phase: 'handedOver' });
    const { desired, migration } = desiredOn('a', [], [], new Map([[UID, src]]), 'slot-01');
    expect(desired.exports).toEqual([{ id: diskId(UID, 'root'), vmi: src.vmi, disk: 'root', address: { kind: 'tcp', host: '10.0.0.1', port: 4420 }, why: 'live migration m1 of VMI default/vm1' }]);
    expect([...migration.handedOver]).toEqual([UID]);
    expect(desiredOn('a', [], [], new Map([[UID, record({ ...freshJournal('m1', 'source'), phase: 'rolledBack' })]]), 'slot-01').desired.exports).toEqual([]);
    expect(desiredOn('b', [], [], new Map([[UID, record(attached)]])).desired.exports).toEqual([]);
  });
});

describe('outcomes, refusals and aborts', () => {
  it('reports one outcome per migration, refusal first', () => {
    expect(outcomeToReport({ role: 'source', outcome: 'running', refused: false }, undefined)).toBeUndefined();
    expect(outcomeToReport({ role: 'target', outcome: 'running', refused: true }, undefined)).toBe('refused');
    expect(outcomeToReport({ role: 'target', outcome: 'failed', refused: false }, 'refused')).toBeUndefined();
    expect(outcomeToReport({ role: 'source', outcome: 'aborted', refused: false }, undefined)).toBe('aborted');
    expect(outcomeToReport({ role: 'none', outcome: 'succeeded', refused: false }, undefined)).toBeUndefined();
  });

  it('aborts only a running source migration whose exports a restart took away, once', () => {
    const exporting = record({ ...freshJournal('m1', 'source'), exports: { root: ref }, phase: 'ready' });
    const state = { ...running, mode: 'PreCopy' as const };
    expect(needsAbort(exporting, state)).toBe(true);
    expect(needsAbort({ ...exporting, abort: 'done' }, state)).toBe(false);
    expect(needsAbort(exporting, { ...state, completed: true })).toBe(false);
    expect(needsAbort(record({ ...freshJournal('m1', 'source') }), state)).toBe(false);
    expect(needsAbort(record(attached()), state)).toBe(false);
  });

  it('takes the export address from the flag, else NODE_IP, else none', () => {
    expect(exportAddressOf('10.1.1.1', { NODE_IP: '10.2.2.2' })).toEqual({ kind: 'tcp', host: '10.1.1.1', port: 4420 });
    expect(exportAddressOf(undefined, { NODE_IP: '10.2.2.2' })).toEqual({ kind: 'tcp', host: '10.2.2.2', port: 4420 });
    expect(exportAddressOf(undefined, {})).toBeUndefined();
  });
});

function attached(): MigrationJournal {
  return { ...freshJournal('m1', 'target'), attached: { root: { kind: 'remote', ref, node: 'a' } } };
}
