import { describe, expect, it } from 'vitest';
import type { ObservedController, ObservedDisk, ObservedImage, ObservedState } from '../../../src/backend/types.js';
import { emptyJournalState, type JournalState } from '../../../src/agent/journal.js';
import { controllerName, diskId } from '../../../src/contract/index.js';
import { reconcile, type Action, type AgentMemory, type ReconcileConfig } from '../../../src/agent/reconcile.js';
import { buildDesired, type DesiredExport, type DesiredState } from '../../../src/agent/desired.js';
import type { RemoteDiskRef } from '../../../src/backend/remote.js';
import { desiredOf, GiB, image, vmi } from './fixtures.js';

const policy = { uid: 107, gid: 107, mode: 0o660 };
const config: ReconcileConfig = { socket: policy, orphanGraceMs: 60_000, cache: {} };
const NOW = 1_000_000;

const img = (name: string, extra: Partial<ObservedImage> = {}): ObservedImage => ({ name, phase: 'ready', sizeBytes: GiB, ref: `lvs/img-${name}`, cloneCount: 0, ...extra });
const disk = (id: string, extra: Partial<ObservedDisk> = {}): ObservedDisk => ({ id, ref: `lvs/${id}`, sizeBytes: 2 * GiB, dependents: 0, owned: true, ...extra });
const ctl = (name: string, diskRef: string, extra: Partial<ObservedController> = {}): ObservedController => ({
  name,
  diskRef,
  readonly: false,
  socketPath: `/vhost/${name}`,
  sessions: 0,
  ...extra,
});
const obs = (o: Partial<ObservedState> = {}): ObservedState => ({ images: [], disks: [], controllers: [], ...o });

function memory(extra: Partial<AgentMemory> & { journal?: JournalState } = {}): AgentMemory {
  return { journal: emptyJournalState(), now: NOW, failed: new Map(), sockets: new Map(), ...extra };
}
const ownedBy = (name: string, disk: string, slot: string): JournalState['owned'][string] => ({
  vmi: { namespace: 'default', name, uid: `uid-${name}` },
  disk,
  slot,
  controller: controllerName(slot, disk),
  source: 'image',
  image: 'fedora',
  createdAt: 1,
});
const kinds = (plan: Action[]): string[] => plan.map((a) => a.kind);
const of = <K extends Action['kind']>(plan: Action[], kind: K): Array<Extract<Action, { kind: K }>> =>
  plan.filter((a): a is Extract<Action, { kind: K }> => a.kind === kind);

const A = vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }]);
const idA = diskId('uid-a', 'root');

describe('reconcile: provisioning', () => {
  it('plans the whole chain for a new disk, in order', () => {
    const plan = reconcile(desiredOf([A], [image('fedora')]), obs(), memory(), config);
    expect(kinds(plan)).toEqual(['ensureImage', 'ensureDisk', 'ensureController', 'fixSocket']);
    expect(of(plan, 'ensureDisk')[0]?.spec).toEqual({ id: idA, source: { kind: 'image', image: 'fedora' }, capacityBytes: 2 * GiB });
    expect(of(plan, 'ensureController')[0]?.spec).toMatchObject({ name: 'slot-01/root', readonly: false, queues: 1 });
  });

  it('is idempotent: a converged node yields only reportReady', () => {
    const o = obs({ images: [img('fedora', { cloneCount: 1 })], disks: [disk(idA, { image: 'fedora' })], controllers: [ctl('slot-01/root', `lvs/${idA}`)] });
    const m = memory({ sockets: new Map([['/vhost/slot-01/root', policy]]) });
    expect(kinds(reconcile(desiredOf([A], [image('fedora')]), o, m, config))).toEqual(['reportReady']);
  });

  it('recreates only the missing controller after a backend restart', () => {
    const o = obs({ images: [img('fedora', { cloneCount: 1 })], disks: [disk(idA, { image: 'fedora' })] });
    const plan = reconcile(desiredOf([A], [image('fedora')]), o, memory(), config);
    expect(kinds(plan)).toEqual(['ensureController', 'fixSocket']);
    expect(of(plan, 'ensureController')[0]?.spec.diskRef).toBe(`lvs/${idA}`);
  });

  it('is not Ready until the socket has the contracted owner and mode', () => {
    const o = obs({ images: [img('fedora', { cloneCount: 1 })], disks: [disk(idA)], controllers: [ctl('slot-01/root', `lvs/${idA}`)] });
    const wrong = memory({ sockets: new Map([['/vhost/slot-01/root', { uid: 0, gid: 0, mode: 0o600 }]]) });
    expect(kinds(reconcile(desiredOf([A], [image('fedora')]), o, wrong, config))).toEqual(['fixSocket']);
    expect(kinds(reconcile(desiredOf([A], [image('fedora')]), o, memory(), config))).toEqual(['fixSocket']);
  });
});

describe('reconcile: safety rules', () => {
  it('never puts a second controller on a bdev another controller serves with a session', () => {
    // The VMI moved from slot-01 to slot-02 while a guest is still attached on the old controller.
    const moved = vmi('a', 'slot-02', [{ name: 'root', image: 'fedora' }]);
    const j = emptyJournalState();
    j.owned[idA] = ownedBy('a', 'root', 'slot-01');
    const o = obs({ images: [img('fedora', { cloneCount: 1 })], disks: [disk(idA)], controllers: [ctl('slot-01/root', `lvs/${idA}`, { sessions: 1 })] });
    const plan = reconcile(desiredOf([moved], [image('fedora')]), o, memory({ journal: j }), config);
    expect(of(plan, 'ensureController')).toEqual([]);
    expect(of(plan, 'reportError')[0]?.message).toMatch(/already served by controller slot-01\/root/);
  });

  it('moves a bdev to the new controller only after deleting the idle old one', () => {
    const moved = vmi('a', 'slot-02', [{ name: 'root', image: 'fedora' }]);
    const j = emptyJournalState();
    j.owned[idA] = ownedBy('a', 'root', 'slot-01');
    const o = obs({ images: [img('fedora', { cloneCount: 1 })], disks: [disk(idA)], controllers: [ctl('slot-01/root', `lvs/${idA}`)] });
    const plan = reconcile(desiredOf([moved], [image('fedora')]), o, memory({ journal: j }), config);
    expect(kinds(plan)).toEqual(['deleteController', 'ensureController', 'fixSocket']);
  });

  it('two VMIs naming one bdev: only the first gets a controller', () => {
    const a = vmi('a', 'slot-01', [{ name: 'd', bdev: 'nvme0n1' }]);
    const b = vmi('b', 'slot-02', [{ name: 'd', bdev: 'nvme0n1' }]);
    const plan = reconcile(desiredOf([a, b], []), obs(), memory(), config);
    expect(of(plan, 'ensureDisk').map((x) => x.target.vmi.name)).toEqual(['a']);
    expect(of(plan, 'reportError')[0]).toMatchObject({ target: { disk: 'd', vmi: { name: 'b' } } });
  });

  it('never deletes a disk that a controller serves', () => {
    const j = emptyJournalState();
    j.owned[idA] = ownedBy('a', 'root', 'slot-01');
    // VMI gone, but its controller has a session: neither goes.
    const o = obs({ disks: [disk(idA)], controllers: [ctl('slot-01/root', `lvs/${idA}`, { sessions: 2 })] });
    const plan = reconcile(desiredOf([], []), o, memory({ journal: j }), config);
    expect(of(plan, 'deleteDisk')).toEqual([]);
    expect(of(plan, 'deleteController')).toEqual([]);
    expect(of(plan, 'reportBlocked').map((b) => b.name)).toEqual(['slot-01/root', idA]);
  });

  it('deletes the controller then the disk of a VMI that is gone', () => {
    const j = emptyJournalState();
    j.owned[idA] = ownedBy('a', 'root', 'slot-01');
    const o = obs({ disks: [disk(idA)], controllers: [ctl('slot-01/root', `lvs/${idA}`)] });
    expect(kinds(reconcile(desiredOf([], []), o, memory({ journal: j }), config))).toEqual(['deleteController', 'deleteDisk']);
  });

  it('never deletes a disk with clones or snapshots depending on it', () => {
    const j = emptyJournalState();
    j.owned[idA] = ownedBy('a', 'root', 'slot-01');
    const plan = reconcile(desiredOf([], []), obs({ disks: [disk(idA, { dependents: 1 })] }), memory({ journal: j }), config);
    expect(of(plan, 'deleteDisk')).toEqual([]);
    expect(of(plan, 'reportBlocked')[0]?.reason).toMatch(/depending on it/);
  });

  it('never deletes a disk whose VMI still exists, even when its annotation is broken', () => {
    const j = emptyJournalState();
    j.owned[idA] = ownedBy('a', 'root', 'slot-01');
    const broken = vmi('a', 'slot-01', '- name: root\n  spdkVhostBlkDisk: {image: fedora, capacity: -1}\n');
    const o = obs({ disks: [disk(idA)], controllers: [ctl('slot-01/root', `lvs/${idA}`)] });
    const plan = reconcile(desiredOf([broken], [image('fedora')]), o, memory({ journal: j }), config);
    expect(of(plan, 'deleteDisk')).toEqual([]);
    expect(of(plan, 'deleteController')).toEqual([]);
    expect(of(plan, 'reportError')[0]?.message).toMatch(/a\.yaml: .*capacity/);
  });

  it('keeps a disk removed from a running VMI until the VMI is deleted', () => {
    const j = emptyJournalState();
    const idData = diskId('uid-a', 'data');
    j.owned[idData] = ownedBy('a', 'data', 'slot-01');
    const o = obs({ images: [img('fedora')], disks: [disk(idData)] });
    const plan = reconcile(desiredOf([A], [image('fedora')]), o, memory({ journal: j }), config);
    expect(of(plan, 'deleteDisk')).toEqual([]);
    expect(of(plan, 'reportBlocked')[0]?.name).toBe(idData);
  });

  it('does not delete a disk a migration still holds (it is exported)', () => {
    const j = emptyJournalState();
    j.owned[idA] = ownedBy('a', 'root', 'slot-01');
    const d = { ...desiredOf([], []), exports: [{ id: idA, vmi: { namespace: 'default', name: 'a', uid: 'uid-a' }, disk: 'root', address: { kind: 'tcp' as const, host: '10.0.0.1', port: 4420 }, why: 'live migration m1' }] };
    const plan = reconcile(d, obs({ disks: [disk(idA)] }), memory({ journal: j }), config);
    expect(of(plan, 'deleteDisk')).toEqual([]);
    expect(of(plan, 'ensureExport').map((a) => a.id)).toEqual([idA]);
    expect(of(plan, 'reportBlocked')[0]?.reason).toMatch(/exported \(live migration m1\)/);
  });

  it('never deletes a bdev we only serve', () => {
    const plan = reconcile(desiredOf([], []), obs({ disks: [disk(idA, { owned: false })] }), memory(), { ...config, orphanGraceMs: 0 });
    expect(of(plan, 'deleteDisk')).toEqual([]);
  });

  it('ignores objects that are not ours', () => {
    const o = obs({ disks: [disk('someone-elses-lvol')], controllers: [ctl('vhost.0', 'Malloc0')] });
    expect(reconcile(desiredOf([], []), o, memory(), { ...config, orphanGraceMs: 0 })).toEqual([]);
  });

  it('orphans are reported at once and collected only after the grace period', () => {
    const orphan = diskId('uid-unknown', 'root');
    const o = obs({ disks: [disk(orphan)], controllers: [ctl('slot-09/root', `lvs/${orphan}`)] });
    const first = reconcile(desiredOf([], []), o, memory(), config);
    expect(kinds(first)).toEqual(['reportOrphan', 'reportOrphan']);
    expect(of(first, 'reportOrphan')[0]?.collectAt).toBe(NOW + 60_000);
    const j = emptyJournalState();
    j.orphans[`controller:slot-09/root`] = NOW - 60_000;
    j.orphans[`disk:${orphan}`] = NOW - 60_000;
    const later = reconcile(desiredOf([], []), o, memory({ journal: j }), config);
    expect(kinds(later)).toEqual(['deleteController', 'deleteDisk', 'reportOrphan', 'reportOrphan']);
  });

  it('an orphan controller with a session is never collected', () => {
    const o = obs({ controllers: [ctl('slot-09/root', 'lvs/x', { sessions: 1 })] });
    const plan = reconcile(desiredOf([], []), o, memory(), { ...config, orphanGraceMs: 0 });
    expect(of(plan, 'deleteController')).toEqual([]);
  });

  it('replaces a controller of ours that serves the wrong bdev (slot reused), but not under a guest', () => {
    const B = vmi('b', 'slot-01', [{ name: 'root', image: 'fedora' }]);
    const o = obs({ images: [img('fedora', { cloneCount: 1 })], disks: [disk(idA)], controllers: [ctl('slot-01/root', `lvs/${idA}`)] });
    const j = emptyJournalState();
    j.owned[idA] = ownedBy('a', 'root', 'slot-01');
    const plan = reconcile(desiredOf([B], [image('fedora')]), o, memory({ journal: j }), config);
    expect(kinds(plan)).toEqual(['deleteController', 'deleteDisk', 'ensureDisk', 'ensureController', 'fixSocket']);
    o.controllers[0] = ctl('slot-01/root', `lvs/${idA}`, { sessions: 1 });
    const busy = reconcile(desiredOf([B], [image('fedora')]), o, memory({ journal: j }), config);
    expect(of(busy, 'deleteController')).toEqual([]);
    expect(of(busy, 'ensureController')).toEqual([]);
  });
});

describe('reconcile: bad input stays with its disk', () => {
  it('capacity smaller than the image fails that disk only', () => {
    const v = vmi('a', 'slot-01', [{ name: 'root', image: 'fedora', capacity: '1Gi' }, { name: 'data', blank: true }]);
    const plan = reconcile(desiredOf([v], [image('fedora', 4 * GiB)]), obs(), memory(), config);
    expect(of(plan, 'reportError')[0]?.message).toBe('volumes[0].spdkVhostBlkDisk.capacity: 1Gi is smaller than image fedora (4Gi)');
    expect(of(plan, 'ensureDisk').map((a) => a.target.disk)).toEqual(['data']);
  });

  it('capacity smaller than the imported image size (catalog did not say) fails that disk', () => {
    const v = vmi('a', 'slot-01', [{ name: 'root', image: 'fedora', capacity: '1Gi' }]);
    const spec = { ...image('fedora'), sizeBytes: undefined };
    const plan = reconcile(desiredOf([v], [spec]), obs({ images: [img('fedora', { sizeBytes: 4 * GiB })] }), memory(), config);
    expect(kinds(plan)).toEqual(['reportError']);
  });

  it('an unknown image fails that disk', () => {
    const v = vmi('a', 'slot-01', [{ name: 'root', image: 'nope' }, { name: 'data', blank: true }]);
    const plan = reconcile(desiredOf([v], []), obs(), memory(), config);
    expect(of(plan, 'reportError')[0]?.message).toMatch(/CachedImage "nope" does not exist/);
    expect(of(plan, 'ensureDisk')).toHaveLength(1);
  });

  it('a schema error fails that VMI only', () => {
    const bad = vmi('bad', 'slot-02', '- name: Root\n  spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}\n');
    const plan = reconcile(desiredOf([bad, A], [image('fedora')]), obs(), memory(), config);
    expect(of(plan, 'reportError')[0]?.message).toMatch(/bad\.yaml: .*\[0\]\.name: must be a DNS-1123 label/);
    expect(of(plan, 'ensureDisk').map((a) => a.target.vmi.name)).toEqual(['a']);
  });

  it('a failed disk is reported, not retried within the round', () => {
    const plan = reconcile(desiredOf([A], [image('fedora')]), obs(), memory({ failed: new Map([['uid-a/root', 'checksum: mismatch']]) }), config);
    expect(plan).toEqual([expect.objectContaining({ kind: 'reportError', message: 'checksum: mismatch' })]);
  });

  it('a VMI without a slot is an error, and a second VMI on a held slot loses', () => {
    const noSlot = vmi('n', undefined, [{ name: 'root', blank: true }]);
    const clash = vmi('z', 'slot-01', [{ name: 'root', blank: true }]);
    const plan = reconcile(desiredOf([A, noSlot, clash], [image('fedora')]), obs(), memory(), config);
    const errors = of(plan, 'reportError').map((e) => e.message);
    expect(errors.some((m) => /n\.yaml: .*slot.*required/.test(m))).toBe(true);
    expect(errors.some((m) => /z\.yaml: .*slot-01 is already held by VMI default\/a/.test(m))).toBe(true);
    expect(of(plan, 'ensureDisk').map((a) => a.target.vmi.name)).toEqual(['a']);
  });
});

describe('reconcile: image cache', () => {
  const limits = (cache: ReconcileConfig['cache']): ReconcileConfig => ({ ...config, cache });

  it('evicts the least recently used unused image over the count limit', () => {
    const j = emptyJournalState();
    j.imageLastUse = { old: 1, mid: 2, new: 3 };
    const o = obs({ images: [img('old'), img('mid'), img('new')] });
    const plan = reconcile(desiredOf([], [image('old'), image('mid'), image('new')]), o, memory({ journal: j }), limits({ maxCount: 2 }));
    expect(of(plan, 'evictImage').map((a) => a.name)).toEqual(['old']);
  });

  it('never evicts an image with clones, in import, or needed', () => {
    const j = emptyJournalState();
    j.imageLastUse = { fedora: 1, importing: 2, cloned: 3 };
    const o = obs({ images: [img('fedora'), img('importing', { phase: 'importing' }), img('cloned', { cloneCount: 1 })] });
    const plan = reconcile(desiredOf([A], [image('fedora'), image('importing'), image('cloned')]), o, memory({ journal: j }), limits({ maxCount: 0 }));
    expect(of(plan, 'evictImage')).toEqual([]);
  });

  it('evicts an unused image that left the catalog', () => {
    const plan = reconcile(desiredOf([], []), obs({ images: [img('gone')] }), memory(), config);
    expect(of(plan, 'evictImage')).toEqual([expect.objectContaining({ name: 'gone', reason: 'no longer in the catalog' })]);
  });
});

describe('reconcile: disks served from another node, and exports', () => {
  const remote: RemoteDiskRef = { transport: 'nvmf-tcp', host: '10.0.0.1', port: 4420, adrfam: 'ipv4', subnqn: `nqn.2024-01.io.kubevirt-spdk:${idA}`, sizeBytes: GiB };
  /** VMI a on this node at slot-05, its root disk attached from node-a (a migration target). */
  const served = (): DesiredState =>
    buildDesired({ vmis: [{ origin: 'a', vmi: vmi('a', undefined, [{ name: 'root', image: 'fedora' }]), slot: 'slot-05', attached: { root: { ref: remote, node: 'node-a' } } }], images: [image('fedora')] });
  const attachedBy = (ref?: string): JournalState['owned'][string] => ({ ...ownedBy('a', 'root', 'slot-05'), source: 'attached', ...(ref ? { ref } : {}) });
  const exportOf = (id: string): DesiredExport => ({ id, vmi: { namespace: 'default', name: 'a', uid: 'uid-a' }, disk: 'root', address: { kind: 'tcp', host: '10.0.0.1', port: 4420 }, why: 'live migration m1' });

  it('attaches instead of creating: no image, no clone, then the controller on what the attach returns', () => {
    const plan = reconcile(served(), obs(), memory(), config);
    expect(kinds(plan)).toEqual(['attachDisk', 'ensureController', 'fixSocket']);
    expect(of(plan, 'attachDisk')[0]).toMatchObject({ id: idA, ref: remote, node: 'node-a' });
    expect(of(plan, 'ensureController')[0]?.spec).toEqual({ name: 'slot-05/root', readonly: false, queues: 1 });
  });

  it('is converged once the controller serves the attached disk the journal recorded', () => {
    const j = emptyJournalState();
    j.owned[idA] = attachedBy(`mig-${idA}n1`);
    const o = obs({ controllers: [ctl('slot-05/root', `mig-${idA}n1`)] });
    expect(kinds(reconcile(served(), o, memory({ journal: j, sockets: new Map([['/vhost/slot-05/root', policy]]) }), config))).toEqual(['reportReady']);
    // After a backend restart the controller is gone: attach again (idempotent), then serve.
    expect(kinds(reconcile(served(), obs(), memory({ journal: j }), config))).toEqual(['attachDisk', 'ensureController', 'fixSocket']);
  });

  it('no longer served from there: the controller goes, then the disk is detached, never deleted', () => {
    const j = emptyJournalState();
    j.owned[idA] = attachedBy(`mig-${idA}n1`);
    const plan = reconcile(desiredOf([], []), obs({ controllers: [ctl('slot-05/root', `mig-${idA}n1`)] }), memory({ journal: j }), config);
    expect(kinds(plan)).toEqual(['deleteController', 'detachDisk']);
    expect(of(plan, 'deleteDisk')).toEqual([]);
    // A guest still on it: neither goes.
    const busy = reconcile(desiredOf([], []), obs({ controllers: [ctl('slot-05/root', `mig-${idA}n1`, { sessions: 1 })] }), memory({ journal: j }), config);
    expect(of(busy, 'detachDisk')).toEqual([]);
    expect(of(busy, 'reportBlocked').map((a) => a.reason)).toEqual([expect.stringMatching(/active vhost session/), expect.stringMatching(/served by controller slot-05\/root/)]);
  });

  it('exports a desired export once, after the chains; unexports what is no longer wanted before deleting the disk', () => {
    const j = emptyJournalState();
    j.owned[idA] = ownedBy('a', 'root', 'slot-01');
    const o = obs({ images: [img('fedora', { cloneCount: 1 })], disks: [disk(idA, { image: 'fedora' })], controllers: [ctl('slot-01/root', `lvs/${idA}`)] });
    const m = memory({ journal: j, sockets: new Map([['/vhost/slot-01/root', policy]]) });
    const d = { ...desiredOf([A], [image('fedora')]), exports: [exportOf(idA)] };
    expect(kinds(reconcile(d, o, m, config))).toEqual(['reportReady', 'ensureExport']);
    j.exports[idA] = { ref: remote, vmi: { namespace: 'default', name: 'a', uid: 'uid-a' }, disk: 'root' };
    expect(kinds(reconcile(d, o, m, config))).toEqual(['reportReady']);
    // A backend that came back may have lost it: made again (idempotent).
    expect(kinds(reconcile(d, o, { ...m, recheckExports: true }, config))).toEqual(['reportReady', 'ensureExport']);
    // The VMI is gone and the export no longer wanted: controller, export, then the disk.
    const gone = reconcile(desiredOf([], [image('fedora')]), o, m, config);
    expect(kinds(gone).filter((k) => !k.startsWith('report'))).toEqual(['deleteController', 'unexportDisk', 'deleteDisk']);
  });

  it('keeps an exported disk whose VMI left this node (a handed-over source), and says why', () => {
    const j = emptyJournalState();
    j.owned[idA] = ownedBy('a', 'root', 'slot-01');
    j.exports[idA] = { ref: remote, vmi: { namespace: 'default', name: 'a', uid: 'uid-a' }, disk: 'root' };
    const o = obs({ disks: [disk(idA)], controllers: [ctl('slot-01/root', `lvs/${idA}`)] });
    const plan = reconcile({ ...desiredOf([], []), exports: [exportOf(idA)] }, o, memory({ journal: j }), config);
    expect(kinds(plan).filter((k) => !k.startsWith('report'))).toEqual(['deleteController']);
    expect(of(plan, 'reportBlocked')).toEqual([expect.objectContaining({ object: 'disk', name: idA, reason: `disk ${idA} is exported (live migration m1)` })]);
  });

  it('an export interrupted by a crash (intent without done) is undone when no longer wanted', () => {
    const j = emptyJournalState();
    j.pending['7'] = { action: 'ensureExport', target: idA, startedAt: 1 };
    expect(of(reconcile(desiredOf([], []), obs(), memory({ journal: j }), config), 'unexportDisk').map((a) => a.id)).toEqual([idA]);
    const wanted = { ...desiredOf([], []), exports: [exportOf(idA)] };
    expect(of(reconcile(wanted, obs({ disks: [disk(idA)] }), memory({ journal: j }), config), 'unexportDisk')).toEqual([]);
  });

  it('reports an export of a disk this node does not have instead of calling the backend', () => {
    const plan = reconcile({ ...desiredOf([], []), exports: [exportOf(idA)] }, obs(), memory(), config);
    expect(of(plan, 'ensureExport')).toEqual([]);
    expect(of(plan, 'reportBlocked')[0]?.reason).toMatch(/no such disk on this node/);
  });
});
