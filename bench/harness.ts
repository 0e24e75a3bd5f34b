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

/** The median of unsorted samples (the lower middle one for an even count). */
export const median = (xs: number[]): number => percentile([...xs].sort((a, b) => a - b), 50);

export const fmt = (n: number, digits = 2): string => (Number.isFinite(n) ? n.toFixed(digits) : String(n));

export interface Series {
  name: string;
  color: string;
  /** [x, y] pairs, in x order. */
  points: Array<[number, number]>;
}

export interface LineChart {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  width?: number;
  height?: number;
}

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** Round axis steps: 1, 2 or 5 times a power of ten, about `n` of them over `max`. */
export function niceTicks(max: number, n = 5): number[] {
  if (!(max > 0)) return [0, 1];
  const raw = max / n;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * pow).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  for (let v = 0; v <= max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if ((ticks[ticks.length - 1] ?? 0) < max) ticks.push(Number((ticks.length * step).toPrecision(12)));
  return ticks;
}

/**
 * A small self-contained SVG line chart (linear axes from 0, so that "flat" reads as flat);
 * no charting dependency. Non-finite points are left out.
 */
export function lineChart(c: LineChart): string {
  const W = c.width ?? 760;
  const H = c.height ?? 440;
  const m = { left: 78, right: 24, top: 48, bottom: 64 + 20 * c.series.length };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const pts = c.series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const xt = niceTicks(Math.max(0, ...pts.map(([x]) => x)));
  const yt = niceTicks(Math.max(0, ...pts.map(([, y]) => y)));
  const xMax = xt[xt.length - 1] ?? 1;
  const yMax = yt[yt.length - 1] ?? 1;
  const X = (x: number): number => m.left + (x / xMax) * pw;
  const Y = (y: number): number => m.top + ph - (y / yMax) * ph;
  const n = (v: number): string => v.toFixed(1);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${W / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${esc(c.title)}</text>`,
  ];
  for (const t of yt) {
    out.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${n(Y(t))}" y2="${n(Y(t))}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${m.left - 8}" y="${n(Y(t) + 4)}" text-anchor="end">${t}</text>`);
  }
  for (const t of xt) {
    out.push(`<line x1="${n(X(t))}" x2="${n(X(t))}" y1="${m.top + ph}" y2="${m.top + ph + 5}" stroke="#333"/>`);
    out.push(`<text x="${n(X(t))}" y="${m.top + ph + 20}" text-anchor="middle">${t}</text>`);
  }
  out.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}" stroke="#333"/>`);
  out.push(`<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}" stroke="#333"/>`);
  out.push(`<text x="${m.left + pw / 2}" y="${m.top + ph + 42}" text-anchor="middle">${esc(c.xLabel)}</text>`);
  out.push(`<text transform="translate(18 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">${esc(c.yLabel)}</text>`);
  c.series.forEach((s, i) => {
    const p = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (p.length) out.push(`<polyline fill="none" stroke="${esc(s.color)}" stroke-width="2.5" points="${p.map(([x, y]) => `${n(X(x))},${n(Y(y))}`).join(' ')}"/>`);
    for (const [x, y] of p) out.push(`<circle cx="${n(X(x))}" cy="${n(Y(y))}" r="4" fill="${esc(s.color)}"><title>${esc(`${s.name}: ${x} -> ${y.toFixed(2)}`)}</title></circle>`);
    const ly = m.top + ph + 58 + 20 * i;
    out.push(`<line x1="${m.left}" x2="${m.left + 24}" y1="${ly - 4}" y2="${ly - 4}" stroke="${esc(s.color)}" stroke-width="3"/>`);
    out.push(`<text x="${m.left + 32}" y="${ly}">${esc(s.name)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
