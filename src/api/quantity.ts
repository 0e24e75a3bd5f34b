/** Kubernetes resource quantities ("20Gi", "512M", "1e9") and Go durations ("10s", "1m30s"). */

const BINARY: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL: Record<string, number> = { '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

const QUANTITY_RE = /^([+]?[0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$/;

/** Bytes for a quantity, or undefined when the text is not a Kubernetes quantity. */
export function parseQuantity(text: string): number | undefined {
  const m = QUANTITY_RE.exec(text.trim());
  if (!m) return undefined;
  const num = Number(m[1]);
  const suffix = m[2] ?? '';
  let mult: number | undefined;
  if (suffix in BINARY) mult = BINARY[suffix];
  else if (suffix in DECIMAL) mult = DECIMAL[suffix];
  else mult = 10 ** Number(suffix.slice(1));
  if (mult === undefined) return undefined;
  const bytes = num * mult;
  return Number.isFinite(bytes) ? Math.ceil(bytes) : undefined;
}

export function formatBytes(bytes: number): string {
  for (const [suffix, mult] of Object.entries(BINARY).reverse()) {
    if (bytes >= mult && bytes % mult === 0) return `${bytes / mult}${suffix}`;
  }
  return `${bytes}`;
}

const DURATION_UNITS: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const DURATION_RE = /([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)/gy;

/** Milliseconds for a Go duration string ("10s", "1m30s", "1.5s"), or undefined. */
export function parseDuration(text: string): number | undefined {
  if (text.length === 0) return undefined;
  if (text === '0') return 0;
  DURATION_RE.lastIndex = 0;
  let total = 0;
  let pos = 0;
  for (let m = DURATION_RE.exec(text); m; m = DURATION_RE.exec(text)) {
    total += Number(m[1]) * (DURATION_UNITS[m[2] ?? ''] ?? NaN);
    pos = DURATION_RE.lastIndex;
  }
  return pos === text.length && Number.isFinite(total) ? total : undefined;
}
