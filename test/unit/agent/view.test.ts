import { describe, expect, it } from 'vitest';
import { NO_SLOT_PROBLEM, buildDesired } from '../../../src/agent/desired.js';
import { standaloneVmi } from '../../../src/agent/standalone.js';
import type { RemoteDiskRef } from '../../../src/backend/remote.js';
import { image, vmi } from './fixtures.js';

/** The node view -> desired state: the slot is a typed field, a migrated disk's source is `attached`. */
const ref: RemoteDiskRef = { transport: 'nbd', address: { kind: 'unix', path: '/run/nbd.sock' }, exportName: 'nbd.d-1', sizeBytes: 1 << 30 };

describe('node view', () => {
  it('standalone mode reads the slot annotation at its edge; a bad one is that VMI\'s problem', () => {
    expect(standaloneVmi('a.yaml', vmi('a', 'slot-07', [{ name: 'root', blank: true }])).slot).toBe('slot-07');
    const bad = standaloneVmi('b.yaml', vmi('b', 'seven', [{ name: 'root', blank: true }]));
    expect(bad.slot).toBeUndefined();
    expect(bad.problems).toEqual(['metadata.annotations["kubevirt-spdk.io/slot"]: "seven" must look like slot-07']);
    const d = buildDesired({ vmis: [bad], images: [] });
    expect(d.vmis[0]?.problems).toEqual(bad.problems);
    expect(d.vmis[0]?.disks).toEqual([]);
  });

  it('a VMI without a slot is kept with a problem (nothing it has is deleted), never given one from an annotation', () => {
    // The annotation says slot-03, but the view (cluster mode: PodResources) gives none.
    const d = buildDesired({ vmis: [{ origin: 'ns/a', vmi: vmi('a', 'slot-03', [{ name: 'root', blank: true }]) }], images: [] });
    expect(d.vmis[0]?.slot).toBeUndefined();
    expect(d.vmis[0]?.problems).toEqual([NO_SLOT_PROBLEM]);
  });

  it('a disk served from another node is attached, with no capacity or image rule to apply; a shared bdev stays itself', () => {
    const v = vmi('a', undefined, [
      { name: 'root', image: 'fedora', capacity: '1Gi' },
      { name: 'shared', bdev: 'nvme0n1' },
    ]);
    const d = buildDesired({ vmis: [{ origin: 'a', vmi: v, slot: 'slot-02', attached: { root: { ref, node: 'node-a' }, shared: { ref, node: 'node-a' } } }], images: [image('fedora', 4 * 2 ** 30)] });
    expect(d.vmis[0]?.disks.map((x) => [x.name, x.source.kind, x.problem, x.capacityBytes])).toEqual([
      ['root', 'attached', undefined, undefined],
      ['shared', 'bdev', undefined, undefined],
    ]);
    // Served locally the same volume breaks the capacity rule, named by field.
    const local = buildDesired({ vmis: [{ origin: 'a', vmi: v, slot: 'slot-02' }], images: [image('fedora', 4 * 2 ** 30)] });
    expect(local.vmis[0]?.disks[0]?.problem).toBe('volumes[0].spdkVhostBlkDisk.capacity: 1Gi is smaller than image fedora (4Gi)');
  });

  it('exports pass through as desired state', () => {
    const e = { id: 'd-1', vmi: { namespace: 'default', name: 'a', uid: 'u' }, disk: 'root', address: { kind: 'tcp' as const, host: '10.0.0.1', port: 4420 }, why: 'live migration m1' };
    expect(buildDesired({ vmis: [], images: [], exports: [e] }).exports).toEqual([e]);
  });
});
