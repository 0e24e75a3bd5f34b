import { describe, expect, it } from 'vitest';
import { SLOT_RE } from '../../../src/api/volumes.js';
import { containerAllocation, deviceList, notReadyReason, requestedSlot, slotIds } from '../../../deviceplugin/slots.js';
import type { SlotStatus } from '../../../src/api/status.js';

describe('slots', () => {
  it('names slots slot-00.. and every name matches the shared slot pattern', () => {
    expect(slotIds(3)).toEqual(['slot-00', 'slot-01', 'slot-02']);
    expect(slotIds(100).at(-1)).toBe('slot-99');
    expect(slotIds(101).at(-1)).toBe('slot-100');
    for (const id of slotIds(250)) expect(id).toMatch(SLOT_RE);
    expect(() => slotIds(0)).toThrow(/1\.\.1000/);
  });

  it('marks every device with the backend health', () => {
    expect(deviceList(['slot-00'], false)).toEqual([{ ID: 'slot-00', health: 'Unhealthy' }]);
  });

  it('mounts the slot directory at the fixed in-pod path', () => {
    expect(containerAllocation('/v', 'slot-07').mounts).toEqual([{ container_path: '/var/run/kubevirt-spdk', host_path: '/v/slot-07', read_only: false }]);
  });

  it('wants exactly one known slot', () => {
    const known = new Set(['slot-00']);
    expect(requestedSlot(['slot-00'], known, 'c')).toBe('slot-00');
    expect(() => requestedSlot([], known, 'c')).toThrow('c: each container must request exactly one kubevirt-spdk.io/vhost-slot, got 0');
    expect(() => requestedSlot(['slot-01'], known, 'c')).toThrow('unknown device "slot-01"');
  });

  it('says which disks hold the gate', () => {
    const s: SlotStatus = {
      slot: 'slot-01',
      vmi: { namespace: 'ns', name: 'vm', uid: 'u' },
      ready: false,
      disks: [
        { name: 'a', phase: 'Ready' },
        { name: 'b', phase: 'Failed', message: 'image fedora-40: checksum mismatch' },
      ],
      updatedAt: '2024-01-01T00:00:00Z',
    };
    expect(notReadyReason(s, 'slot-01')).toBe('disks not ready for VMI ns/vm: b (Failed: image fedora-40: checksum mismatch)');
    expect(notReadyReason({ ...s, ready: true }, 'slot-01')).toBeUndefined();
    expect(notReadyReason({ ...s, ready: true }, 'slot-02')).toBe('the report is for slot-01, not slot-02');
  });
});
