/**
 * Benchmarks report ratios against a baseline measured in the same process, never absolute
 * thresholds in tests. Each bench/<area>.bench.ts exports `section` (a BenchSection factory);
 * bench/run.ts runs them all and writes bench/REPORT.md.
 */
export interface BenchTable {
  title: string;
  columns: string[];
  rows: Array<Array<string | number>>;
  /** What the numbers mean, targets, and the baseline the ratios are against. */
  notes?: string[];
}

export interface BenchSection {
  area: string;
  tables: BenchTable[];
  /** Optional SVG charts: file name (under bench/) -> SVG text. */
  charts?: Record<string, string>;
}

export type BenchModule = { section: () => Promise<BenchSection> };

export async function timeIt<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = process.hrtime.bigint();
  const value = await fn();
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, value };
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx] ?? NaN;
}

export const fmt = (n: number, digits = 2): string => (Number.isFinite(n) ? n.toFixed(digits) : String(n));
