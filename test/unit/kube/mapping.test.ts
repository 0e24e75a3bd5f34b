import { describe, expect, it } from 'vitest';
import { STATUS_ANNOTATION } from '../../../src/api/volumes.js';
import {
  NO_SLOT_PROBLEM,
  catalogOf,
  clusterDesired,
  eventsFor,
  newEvents,
  nodeImageCacheStatus,
  slotsByVmi,
  vmiStatusPatch,
} from '../../../src/kube/mapping.js';
import type { PodSlot } from '../../../src/kube/podresources.js';

const ROOT = '- name: root\n  spdkVhostBlkDisk: {image: fedora, capacity: 10Gi}\n';
const vmi = (name: string, uid: string, volumes: string | null = ROOT, extra: Record<string, string> = {}) => ({
  metadata: { name, namespace: 'ns', uid, annotations: { ...(volumes !== null ? { 'kubevirt-spdk.io/volumes': volumes } : {}), ...extra } },
});
const pod = (name: string, vmiUid: string, phase = 'Running') => ({
  metadata: { name, namespace: 'ns', labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': vmiUid } },
  status: { phase },
});
const slot = (p: string, s: string): PodSlot => ({ namespace: 'ns', pod: p, container: 'compute', slot: s });
const image = (name: string, size = '4Gi') => ({
  apiVersion: 'kubevirt-spdk.io/v1alpha1',
  kind: 'CachedImage',
  metadata: { name },
  spec: { source: { hostPath: { path: `/images/${name}.raw` } }, size },
});

describe('slotsByVmi', () => {
  it('maps a VMI to the slot PodResources lists for its live launcher pod', () => {
    expect(slotsByVmi([pod('p1', 'u1'), pod('p2', 'u2')], [slot('p1', 'slot-01'), slot('p2', 'slot-02')])).toEqual(
      new Map([
        ['u1', 'slot-01'],
        ['u2', 'slot-02'],
      ]),
    );
  });

  it('ignores finished pods and pods without our slot', () => {
    expect(slotsByVmi([pod('old', 'u1', 'Failed'), pod('p3', 'u3')], [slot('old', 'slot-01')])).toEqual(new Map());
  });

  it('keeps the slot a VMI had when two live pods of it hold slots', () => {
    const pods = [pod('a', 'u1'), pod('b', 'u1')];
    const slots = [slot('a', 'slot-05'), slot('b', 'slot-02')];
    expect(slotsByVmi(pods, slots).get('u1')).toBe('slot-02');
    expect(slotsByVmi(pods, slots, new Map([['u1', 'slot-05']])).get('u1')).toBe('slot-05');
  });
});

describe('clusterDesired', () => {
  it('resolves a VMI through its pod to a slot and its disks against the catalog', () => {
    const { desired, slots } = clusterDesired({ vmis: [vmi('vm1', 'u1')], pods: [pod('p1', 'u1')], podSlots: [slot('p1', 'slot-03')], cachedImages: [image('fedora')] });
    expect(slots.get('u1')).toBe('slot-03');
    expect(desired.vmis).toHaveLength(1);
    expect(desired.vmis[0]).toMatchObject({ ref: { namespace: 'ns', name: 'vm1', uid: 'u1' }, origin: 'ns/vm1', slot: 'slot-03', problems: [] });
    expect(desired.vmis[0]?.disks[0]).toMatchObject({ name: 'root', controller: 'slot-03/root', image: { name: 'fedora', sizeBytes: 4 * 2 ** 30 } });
  });

  it('ignores a slot annotation set by hand: the device plugin allocation is the truth', () => {
    const { desired } = clusterDesired({ vmis: [vmi('vm1', 'u1', ROOT, { 'kubevirt-spdk.io/slot': 'slot-09' })], pods: [], podSlots: [], cachedImages: [image('fedora')] });
    expect(desired.vmis[0]?.slot).toBeUndefined();
    expect(desired.vmis[0]?.problems).toEqual([NO_SLOT_PROBLEM]);
  });

  it('keeps a VMI whose pod has no slot yet in the desired state (its disks are not deleted) with a problem', () => {
    const { desired } = clusterDesired({ vmis: [vmi('vm1', 'u1')], pods: [pod('p1', 'u1')], podSlots: [], cachedImages: [image('fedora')] });
    expect(desired.vmis.map((v) => v.ref.uid)).toEqual(['u1']);
    expect(desired.vmis[0]?.disks).toEqual([]);
  });

  it('leaves out VMIs without our annotation, and keeps the identity of one that does not parse', () => {
    const bad = { metadata: { name: 'vm3', namespace: 'ns', uid: 'u3', annotations: { 'kubevirt-spdk.io/volumes': 'x' } }, spec: { volumes: 'not a list' } };
    const { desired } = clusterDesired({ vmis: [vmi('plain', 'u2', null), bad], pods: [], podSlots: [], cachedImages: [] });
    expect(desired.vmis.map((v) => v.ref.name)).toEqual(['vm3']);
    expect(desired.vmis[0]?.problems.join()).toMatch(/spec\.volumes/);
  });

  it('reports an invalid CachedImage and leaves it out of the catalog', () => {
    const r = catalogOf([image('fedora'), { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name: 'bad' }, spec: { source: {} } }]);
    expect(r.images.map((i) => i.name)).toEqual(['fedora']);
    expect(r.problems.join()).toMatch(/cachedimage bad.*source/);
  });
});

describe('VMI status patch', () => {
  const status = { node: 'n1', slot: 'slot-01', disks: [{ name: 'root', phase: 'Ready' as const }], updatedAt: '2024-01-01T00:00:00Z' };

  it('is a merge patch of the status annotation alone', () => {
    expect(vmiStatusPatch({ other: 'x' }, status)).toEqual({ metadata: { annotations: { [STATUS_ANNOTATION]: JSON.stringify(status) } } });
  });

  it('is not needed when only the timestamp differs', () => {
    const current = { [STATUS_ANNOTATION]: JSON.stringify({ ...status, updatedAt: '2023-01-01T00:00:00Z' }) };
    expect(vmiStatusPatch(current, status)).toBeUndefined();
    expect(vmiStatusPatch(current, { ...status, disks: [{ name: 'root', phase: 'Failed' }] })).toBeDefined();
    expect(vmiStatusPatch({ [STATUS_ANNOTATION]: 'garbage' }, status)).toBeDefined();
  });
});

describe('events', () => {
  it('one per failed disk and per input problem, none for a VMI still waiting for its slot', () => {
    const e = eventsFor(
      { disks: [{ name: 'root', phase: 'Failed', message: 'no space' }, { name: 'data', phase: 'Ready' }] },
      ['volumes[0].spdkVhostBlkDisk.capacity: must be > 0', NO_SLOT_PROBLEM],
    );
    expect(e.map((x) => [x.reason, x.message])).toEqual([
      ['SpdkVolumesInvalid', 'volumes[0].spdkVhostBlkDisk.capacity: must be > 0'],
      ['SpdkDiskFailed', 'disk root: no space'],
    ]);
  });

  it('are deduplicated: only conditions not reported before', () => {
    const first = eventsFor({ disks: [{ name: 'root', phase: 'Failed', message: 'x' }] }, []);
    expect(newEvents(new Set(), first)).toHaveLength(1);
    expect(newEvents(new Set(first.map((e) => e.key)), first)).toEqual([]);
    const other = eventsFor({ disks: [{ name: 'root', phase: 'Failed', message: 'y' }] }, []);
    expect(newEvents(new Set(first.map((e) => e.key)), other)).toHaveLength(1);
  });
});

describe('node cache state', () => {
  it('builds the NodeImageCache status with a readable summary', () => {
    const s = nodeImageCacheStatus(
      {
        backend: { kind: 'spdk', ok: true },
        images: [
          { name: 'fedora', phase: 'ready', sizeBytes: 100, cloneCount: 3, lastUse: '2024-01-01T00:00:00Z' },
          { name: 'debian', phase: 'importing', sizeBytes: 50, cloneCount: 0 },
        ],
      },
      'now',
    );
    expect(s).toEqual({
      backend: 'spdk',
      summary: 'debian[importing], fedora(3 clones)',
      usedBytes: 150,
      updatedAt: 'now',
      images: [
        { name: 'debian', phase: 'importing', sizeBytes: 50, clones: 0 },
        { name: 'fedora', phase: 'ready', sizeBytes: 100, clones: 3, lastUsed: '2024-01-01T00:00:00Z' },
      ],
    });
  });
});
