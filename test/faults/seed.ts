/**
 * Seeded randomness for fault scenarios: every run prints its seed, and `FAULT_SEED=<n>`
 * replays a failing run exactly. mulberry32: small, fast, good enough to pick faults.
 */
export interface Rng {
  readonly seed: number;
  next(): number;
  int(lo: number, hi: number): number;
  pick<T>(xs: readonly T[]): T;
}

export function rng(seed: number): Rng {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    seed,
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: (xs) => {
      const x = xs[Math.floor(next() * xs.length)];
      if (x === undefined) throw new Error('pick from an empty list');
      return x;
    },
  };
}

/** The run's seed: FAULT_SEED if given, else a fresh one (printed by the caller). */
export function runSeed(): number {
  const env = process.env.FAULT_SEED;
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isInteger(n)) throw new Error(`FAULT_SEED: must be an integer, got "${env}"`);
    return n;
  }
  return Math.floor(Math.random() * 2 ** 31);
}

/** Scale of the suite: FAULT_SCALE=1 in `make test`, larger in `make faults`. */
export function scale(): number {
  const n = Number(process.env.FAULT_SCALE ?? '1');
  if (!Number.isFinite(n) || n < 1) throw new Error(`FAULT_SCALE: must be a number >= 1, got "${process.env.FAULT_SCALE}"`);
  return n;
}

/** Totals printed at the end of a suite. */
export class Tally {
  scenarios = 0;
  faults = 0;
  readonly invariants = new Map<string, number>();

  held(name: string): void {
    this.invariants.set(name, (this.invariants.get(name) ?? 0) + 1);
  }

  line(suite: string, seed: number): string {
    const inv = [...this.invariants].map(([k, v]) => `${k}=${v}`).join(' ');
    return `[faults] ${suite}: seed=${seed} scenarios=${this.scenarios} faults=${this.faults} invariants-checked: ${inv}`;
  }
}
