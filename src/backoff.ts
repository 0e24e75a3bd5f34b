/**
 * Capped exponential backoff, the one formula every retry loop here uses (the agent's backend
 * retries, Kubernetes writes and informer restarts, the SPDK RPC client's reconnects, the
 * spdk backend waiting for spdk_tgt at start): `initialMs` after the first failure, doubling
 * up to `maxMs`. Full jitter spreads callers that failed together (one spdk_tgt restart fails
 * every disk's call at once) so that they do not all come back in the same millisecond.
 */
export interface Backoff {
  initialMs: number;
  maxMs: number;
}

/** Bounds the exponent: 2 ** 30 times any sane initial delay is past every cap. */
const MAX_DOUBLINGS = 30;

/** The delay before the next try, after `failures` (>= 1) failures in a row. */
export function backoffMs(failures: number, b: Backoff): number {
  return Math.min(b.maxMs, b.initialMs * 2 ** Math.min(Math.max(failures, 1) - 1, MAX_DOUBLINGS));
}

/** Full jitter: uniform in [0, ms], rounded to whole milliseconds. */
export function fullJitter(ms: number, random: () => number = Math.random): number {
  return Math.round(random() * ms);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
