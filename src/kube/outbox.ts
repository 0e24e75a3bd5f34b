import { backoffMs, type Backoff } from '../backoff.js';
import type { Logger } from '../log.js';
import { DEFAULT_API_BACKOFF, errorText } from './informer.js';
import { isNotFound } from './api.js';

/**
 * Writes to the API server that must eventually happen (status patches, Events, cache state),
 * keyed so that a newer write of the same thing replaces an older one still waiting. Failures
 * are retried with a bounded backoff, so an API server outage delays them and loses nothing
 * but superseded values. A 404 drops the write: its object is gone.
 */
export class Outbox {
  private readonly pending = new Map<string, () => Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private failures = 0;
  private closed = false;

  constructor(
    private readonly log: Logger,
    private readonly backoff: Backoff = DEFAULT_API_BACKOFF,
  ) {}

  get size(): number {
    return this.pending.size;
  }

  put(key: string, write: () => Promise<void>): void {
    if (this.closed) return;
    this.pending.set(key, write);
    if (this.failures === 0) this.schedule(0);
  }

  /** The API server is back (a watch reconnected): retry now instead of at the end of the backoff. */
  retryNow(): void {
    if (this.pending.size === 0 || this.flushing) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.schedule(0);
  }

  /** Resolves when nothing is pending or in flight (tests, shutdown). */
  async drain(): Promise<void> {
    while (this.flushing || (this.pending.size > 0 && this.failures === 0)) {
      await (this.flushing ?? new Promise((r) => setTimeout(r, 5)));
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.flushing;
  }

  private delayMs(): number {
    return this.failures === 0 ? 0 : backoffMs(this.failures, this.backoff);
  }

  private schedule(delayMs: number): void {
    // A flush in progress looks at the queue again when it ends; a retry timer already waits.
    if (this.closed || this.flushing || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flushing = this.flush().finally(() => {
        this.flushing = undefined;
        if (this.pending.size > 0) this.schedule(this.delayMs());
      });
    }, delayMs);
  }

  private async flush(): Promise<void> {
    let failed = 0;
    for (const [key, write] of [...this.pending]) {
      if (this.closed) return;
      try {
        await write();
        if (this.pending.get(key) === write) this.pending.delete(key);
      } catch (e) {
        if (isNotFound(e)) {
          if (this.pending.get(key) === write) this.pending.delete(key);
          this.log.debug({ event: 'write-dropped', key }, 'object is gone; write dropped');
          continue;
        }
        failed++;
        this.log[this.failures === 0 ? 'warn' : 'debug']({ event: 'write-failed', key, error: errorText(e) }, 'API write failed; will retry');
      }
    }
    this.failures = failed === 0 ? 0 : this.failures + 1;
  }
}
