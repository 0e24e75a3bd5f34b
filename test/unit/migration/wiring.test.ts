import type { KubernetesObject } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { parseVmi, spdkVolumesOf } from '../../../src/api/vmi.js';
import { diskId } from '../../../src/contract/index.js';
import type { RemoteDiskRef } from '../../../src/backend/remote.js';
import {
  EXPORTS_ANNOTATION,
  adjustVmis,
  exportAddressOf,
  exportsFor,
  exportsPatch,
  factsOf,
  heldDiskIds,
  needsAbort,
  outcomeToReport,
  overlayDataNode,
  type MigrationRecord,
} from '../../../src/kube/migration.js';
import { freshJournal, planMigration } from '../../../src/migration/coordinator.js';
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

describe('VMI -> migration facts', () => {
  it('reads state, disks (local vs shared bdev) and only the exports of the current migration', () => {
    const published = JSON.stringify([
      { disk: 'root', migration: 'm1', ref },
      { disk: 'root', migration: 'm0', ref: { ...ref, host: '10.9.9.9' } },
    ]);
    const f = factsOf(vmi({}, running, { [EXPORTS_ANNOTATION]: published }));
    if ('problem' in f) throw new Error(f.problem);
    expect(f.state?.targetNode).toBe('b');
    expect(f.disks).toEqual([
      { name: 'root', diskId: diskId(UID, 'root'), source: { kind: 'local' }, readonly: false, queues: 2 },
      { name: 'data', diskId: diskId(UID, 'data'), source: { kind: 'bdev', bdev: 'Nvme0n1' }, readonly: false, queues: 1 },
    ]);
    expect(f.sourceExports).toEqual({ root: ref });
    expect(exportsFor(published, 'm2')).toBeUndefined();
    expect(exportsFor('not json', 'm1')).toBeUndefined();
    expect(exportsFor(JSON.stringify([{ disk: 'root', migration: 'm1', ref: { transport: 'nvmf-tcp' } }]), 'm1')).toBeUndefined();
  });

  it('names the field when migrationState is malformed instead of throwing', () => {
    const f = factsOf(vmi({}, { mode: 'Sideways' }));
    expect(f).toHaveProperty('problem');
    expect((f as { problem: string }).problem).toMatch(/mode/);
  });
});

describe('publishing exports', () => {
  it('patches only when the annotation differs, and removes it once nothing is exported', () => {
    const j = { ...freshJournal('m1', 'source'), exports: { root: ref } };
    const patch = exportsPatch(undefined, j);
    expect(patch).toBeDefined();
    const value = patch!.metadata.annotations[EXPORTS_ANNOTATION]!;
    expect(exportsFor(value, 'm1')).toEqual({ root: ref });
    expect(exportsPatch(value, j)).toBeUndefined();
    expect(exportsPatch(value, { ...j, exports: {} })).toEqual({ metadata: { annotations: { [EXPORTS_ANNOTATION]: null } } });
    expect(exportsPatch(undefined, { ...j, exports: {} })).toBeUndefined();
  });

  it('a scripted migration: what the source publishes is what the target attaches', () => {
    const src = factsOf(vmi({}, running));
    if ('problem' in src) throw new Error(src.problem);
    const base = { disks: src.disks, backendCanMigrate: true, exportAddress: { kind: 'tcp' as const, host: '10.0.0.1', port: 4420 } };
    const sPlan = planMigration({ ...base, node: 'a', state: src.state, slot: 'slot-01', sourceExports: undefined, journal: undefined });
    expect(sPlan.actions.filter((a) => a.type === 'export').map((a) => a.type === 'export' && a.diskId)).toEqual([diskId(UID, 'root')]);
    // The executor records the export; the agent publishes the journal on the VMI.
    const sJournal = { ...sPlan.journal!, exports: { root: ref } };
    const annotation = exportsPatch(undefined, sJournal)!.metadata.annotations[EXPORTS_ANNOTATION]!;
    const tgt = factsOf(vmi({}, running, { [EXPORTS_ANNOTATION]: annotation }));
    if ('problem' in tgt) throw new Error(tgt.problem);
    const tPlan = planMigration({ ...base, node: 'b', state: tgt.state, slot: 'slot-05', sourceExports: tgt.sourceExports, journal: undefined });
    expect(tPlan.actions).toContainEqual({ type: 'attachRemote', disk: 'root', diskId: diskId(UID, 'root'), ref });
    expect(tPlan.actions).toContainEqual({ type: 'openShared', disk: 'data', diskId: diskId(UID, 'data'), bdev: 'Nvme0n1' });
    expect(tPlan.actions.at(-2)).toEqual({ type: 'reportTargetReady', slot: 'slot-05' });
  });
});

describe('the desired state during and after a migration', () => {
  const attached: MigrationJournal = {
    ...freshJournal('m1', 'target'),
    attached: { root: { diskRef: 'mig-xn1', kind: 'remote' }, data: { diskRef: 'Nvme0n1', kind: 'shared' } },
  };

  it('target: a migrating VMI joins only once every disk is attached, served from the attached bdevs', () => {
    const t = vmi({ 'kubevirt.io/migrationTargetNodeName': 'b' }, running);
    expect(adjustVmis('b', [], [t], new Map())).toEqual([]);
    const half = { ...attached, attached: { data: attached.attached.data! } };
    expect(adjustVmis('b', [], [t], new Map([[UID, record(half)]]))).toEqual([]);
    const [out] = adjustVmis('b', [], [t], new Map([[UID, record(attached)]]));
    const vols = spdkVolumesOf(parseVmi(out));
    expect(vols.map((v) => [v.name, v.spdkVhostBlkDisk.bdev, v.spdkVhostBlkDisk.image, v.spdkVhostBlkDisk.capacity])).toEqual([
      ['root', 'mig-xn1', undefined, undefined],
      ['data', 'Nvme0n1', undefined, undefined],
    ]);
    expect(vols[0]?.spdkVhostBlkDisk).toMatchObject({ queues: 2, bootOrder: 1 });
  });

  it('target after success: the VMI on this node stays served from the source; rolled back: served as declared', () => {
    const done = vmi({ 'kubevirt.io/nodeName': 'b' }, { ...running, completed: true });
    const [out] = adjustVmis('b', [done], [], new Map([[UID, record(attached)]]));
    expect(spdkVolumesOf(parseVmi(out))[0]?.spdkVhostBlkDisk.bdev).toBe('mig-xn1');
    const rolledBack = { ...attached, attached: {}, phase: 'rolledBack' as const };
    expect(adjustVmis('b', [done], [], new Map([[UID, record(rolledBack)]]))).toEqual([done]);
  });

  it('source: the VMI leaves the desired state once the migration succeeded, not before, not after a failure', () => {
    expect(adjustVmis('a', [vmi({ 'kubevirt.io/nodeName': 'a' }, running)], [], new Map())).toHaveLength(1);
    expect(adjustVmis('a', [vmi({ 'kubevirt.io/nodeName': 'a' }, { ...running, failed: true })], [], new Map())).toHaveLength(1);
    expect(adjustVmis('a', [vmi({ 'kubevirt.io/nodeName': 'a' }, { ...running, completed: true })], [], new Map())).toEqual([]);
  });

  it('holds exported disks only, and overlays the data node on a target\'s remote disks', () => {
    const src = record({ ...freshJournal('m1', 'source'), exports: { root: ref }, phase: 'handedOver' });
    expect([...heldDiskIds([src])]).toEqual([diskId(UID, 'root')]);
    expect([...heldDiskIds([record({ ...freshJournal('m1', 'source'), phase: 'rolledBack' })])]).toEqual([]);
    expect([...heldDiskIds([record(attached)])]).toEqual([]);
    const status = { node: 'b', disks: [{ name: 'root', phase: 'Ready' as const, dataNode: 'b' }, { name: 'data', phase: 'Ready' as const, dataNode: 'b' }], updatedAt: 'now' };
    expect(overlayDataNode(status, record(attached)).disks.map((d) => d.dataNode)).toEqual(['a', 'b']);
    expect(overlayDataNode(status, undefined)).toBe(status);
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
  return { ...freshJournal('m1', 'target'), attached: { root: { diskRef: 'mig-xn1', kind: 'remote' } } };
}
