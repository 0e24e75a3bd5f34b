import { backoffMs } from '../../backoff.js';

/**
 * Background retries of hydration streams, one per key (an image or a disk): a capped
 * exponential backoff (`initialMs` doubling up to 30 s) that restarts from `initialMs` once
 * `forget` is called after a success, and remembers the last failure for status messages.
 */
const MAX_DELAY_MS = 30_000;

export class RetryLater {
  private readonly entries = new Map<string, { attempt: number; timer?: NodeJS.Timeout; lastError: string }>();
  private closed = false;

  constructor(
    private readonly initialMs: number,
    /** Runs the retry; a rejection schedules the next one. */
    private readonly attempt: (key: string) => Promise<unknown>,
  ) {}

  schedule(key: string, why: string): void {
    if (this.closed) return;
    const e = this.entries.get(key) ?? { attempt: 0, lastError: why };
    clearTimeout(e.timer);
    e.attempt++;
    const delay = backoffMs(e.attempt, { initialMs: this.initialMs, maxMs: MAX_DELAY_MS });
    e.lastError = why;
    e.timer = setTimeout(() => {
      e.timer = undefined;
      this.attempt(key).catch((err: unknown) => this.schedule(key, err instanceof Error ? err.message : String(err)));
    }, delay);
    this.entries.set(key, e);
  }

  /** The failure that the pending retry follows, if any. */
  lastError(key: string): string | undefined {
    return this.entries.get(key)?.lastError;
  }

  forget(key: string): void {
    clearTimeout(this.entries.get(key)?.timer);
    this.entries.delete(key);
  }

  close(): void {
    this.closed = true;
    for (const e of this.entries.values()) clearTimeout(e.timer);
  }
}
