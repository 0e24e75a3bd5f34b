import { describe, expect, it } from 'vitest';
import { BOOT_PROFILE_LIMITS, BootProfileSchema, bootProfileProblem, coalesceBootRanges, rangesBytes, subtractRanges } from '../../../src/contract/boot-profile.js';

const K = 64 * 1024;
const MiB = 1024 * 1024;

describe('coalesceBootRanges (pure)', () => {
  it('aligns reads outward to whole clusters, sorts and merges touching ones', () => {
    const p = coalesceBootRanges(
      [
        { offset: 10 * MiB + 100, length: 10 },
        { offset: 0, length: 512 },
        { offset: K, length: K },
        { offset: 10 * MiB + K - 1, length: 2 },
      ],
      64 * MiB,
    );
    expect(p).toEqual({ sizeBytes: 64 * MiB, ranges: [{ offset: 0, length: 2 * K }, { offset: 10 * MiB, length: 2 * K }] });
    expect(BootProfileSchema.safeParse(p).success).toBe(true);
  });

  it('clips to the image and drops what lies outside it', () => {
    const p = coalesceBootRanges([{ offset: 63 * MiB, length: 4 * MiB }, { offset: 80 * MiB, length: K }], 64 * MiB);
    expect(p?.ranges).toEqual([{ offset: 63 * MiB, length: MiB }]);
    expect(coalesceBootRanges([{ offset: 80 * MiB, length: K }], 64 * MiB)).toBeUndefined();
    expect(coalesceBootRanges([], 64 * MiB)).toBeUndefined();
  });

  it('over the range limit merges the closest neighbours, never losing a block', () => {
    // 10 ranges, gaps of 1, 2, 1, 5, 1, ... clusters: asked for 4.
    const reads = [0, 2, 5, 7, 13, 15, 30, 32, 60, 62].map((c) => ({ offset: c * K, length: K }));
    const p = coalesceBootRanges(reads, 64 * MiB, { maxRanges: 4 });
    expect(p).toBeDefined();
    expect(p!.ranges.length).toBeLessThanOrEqual(4);
    expect(subtractRanges(reads, p!.ranges)).toEqual([]);
    expect(BootProfileSchema.safeParse(p).success).toBe(true);
    // Thousands of scattered reads still give a valid profile within the hard limit.
    const many = Array.from({ length: 5000 }, (_, i) => ({ offset: i * 3 * K, length: K }));
    const q = coalesceBootRanges(many, 1024 * MiB);
    expect(q!.ranges.length).toBeLessThanOrEqual(BOOT_PROFILE_LIMITS.maxRanges);
    expect(subtractRanges(many, q!.ranges)).toEqual([]);
    expect(BootProfileSchema.safeParse(q).success).toBe(true);
  });

  it('over the byte limit keeps the first bytes of the disk', () => {
    const p = coalesceBootRanges([{ offset: 0, length: 4 * MiB }, { offset: 8 * MiB, length: 4 * MiB }], 64 * MiB, { maxBytes: 5 * MiB });
    expect(p!.ranges).toEqual([{ offset: 0, length: 4 * MiB }, { offset: 8 * MiB, length: MiB }]);
    expect(rangesBytes(p!.ranges)).toBe(5 * MiB);
  });
});

describe('subtractRanges (pure)', () => {
  it('removes what the stream had already copied', () => {
    const after = [{ offset: 0, length: 4 * MiB }, { offset: 10 * MiB, length: K }];
    const before = [{ offset: 0, length: MiB }, { offset: 2 * MiB, length: K }];
    expect(subtractRanges(after, before)).toEqual([
      { offset: MiB, length: MiB },
      { offset: 2 * MiB + K, length: 2 * MiB - K },
      { offset: 10 * MiB, length: K },
    ]);
    expect(subtractRanges(before, after)).toEqual([]);
  });
});

describe('BootProfileSchema: a profile from another node is hostile', () => {
  const ok = { sizeBytes: 64 * MiB, ranges: [{ offset: 0, length: K }, { offset: 4 * MiB, length: 2 * K }] };
  it('accepts a coalesced profile', () => {
    expect(bootProfileProblem(ok)).toBeUndefined();
  });
  it.each([
    ['unaligned offset', { ...ok, ranges: [{ offset: 512, length: K }] }, 'bootProfile.ranges[0].offset: must be a multiple of 65536'],
    ['zero length', { ...ok, ranges: [{ offset: 0, length: 0 }] }, 'bootProfile.ranges[0].length'],
    ['beyond the image', { ...ok, ranges: [{ offset: 64 * MiB, length: K }] }, 'bootProfile.ranges[0].length: range 67108864+65536 ends beyond the image size 67108864'],
    ['overlap', { ...ok, ranges: [{ offset: 0, length: 2 * K }, { offset: K, length: K }] }, 'bootProfile.ranges[1].offset: 65536 overlaps or touches the previous range'],
    ['unsorted', { ...ok, ranges: [{ offset: 4 * MiB, length: K }, { offset: 0, length: K }] }, 'bootProfile.ranges[1].offset'],
    ['too many ranges', { sizeBytes: 1024 * MiB, ranges: Array.from({ length: 1025 }, (_, i) => ({ offset: i * 2 * K, length: K })) }, 'bootProfile.ranges: '],
    ['too many bytes', { sizeBytes: 4096 * MiB, ranges: [{ offset: 0, length: 2048 * MiB }] }, 'bootProfile.ranges: 2147483648 bytes in all is more than the limit'],
    ['unknown field', { ...ok, path: '/etc/passwd' }, 'bootProfile: Unrecognized key'],
    ['negative size', { ...ok, sizeBytes: -1 }, 'bootProfile.sizeBytes'],
    ['not an object', 'ranges', 'bootProfile: Expected object'],
  ])('refuses %s, naming the field', (_what, raw, msg) => {
    expect(bootProfileProblem(raw)).toContain(msg);
  });
});
