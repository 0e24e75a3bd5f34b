import { isTransientError } from '../backend/types.js';
import { backoffMs, fullJitter, sleep } from '../backoff.js';

export interface RetryOptions {
  /** Total tries including the first. */
  attempts: number;
  baseMs: number;
  maxMs: number;
}

export const DEFAULT_RETRY: RetryOptions = { attempts: 6, baseMs: 50, maxMs: 2000 };

/** busy and transport errors are worth retrying; the driver's error mapping decides (backend/types.ts). */
export const isTransient = isTransientError;

// The one backoff formula (src/backoff.ts), re-exported for the agent's callers.
export { backoffMs, type Backoff } from '../backoff.js';

/** Runs `fn`, retrying transient errors with bounded exponential backoff (full jitter). */
export async function withRetry<T>(fn: () => Promise<T>, opts: RetryOptions, onRetry?: (err: unknown, attempt: number, delayMs: number) => void): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      if (!isTransient(e) || attempt >= opts.attempts) throw e;
      const delay = fullJitter(backoffMs(attempt, { initialMs: opts.baseMs, maxMs: opts.maxMs }));
      onRetry?.(e, attempt, delay);
      await sleep(delay);
    }
  }
}
