import { describe, expect, it } from 'vitest';
import { backoffMs, fullJitter } from '../../src/backoff.js';

describe('backoff (the one formula of every retry loop)', () => {
  it('starts at initialMs, doubles per failure and stops at maxMs', () => {
    const b = { initialMs: 100, maxMs: 5_000 };
    expect([1, 2, 3, 4, 5, 6, 7].map((n) => backoffMs(n, b))).toEqual([100, 200, 400, 800, 1_600, 3_200, 5_000]);
  });

  it('stays finite and capped after any number of failures, also with a zero initial delay', () => {
    expect(backoffMs(10_000, { initialMs: 50, maxMs: 2_000 })).toBe(2_000);
    expect(backoffMs(10_000, { initialMs: 0, maxMs: 2_000 })).toBe(0);
  });

  it('full jitter is uniform between 0 and the delay', () => {
    expect(fullJitter(1_000, () => 0)).toBe(0);
    expect(fullJitter(1_000, () => 0.5)).toBe(500);
    expect(fullJitter(1_000, () => 0.9999)).toBe(1_000);
  });
});
