import type { ObservedState, StorageBackend } from '../backend/types.js';

/**
 * Shares observations among concurrent callers, while guaranteeing each caller one that
 * started after it asked (so a safety re-check never sees a stale listing): callers that
 * arrive while a listing is running wait for the next one, which they share.
 */
export class FreshObserver {
  private running: Promise<ObservedState> | undefined;
  private queued: Promise<ObservedState> | undefined;
  count = 0;

  constructor(private readonly backend: StorageBackend) {}

  fresh(): Promise<ObservedState> {
    if (!this.running) return this.start();
    this.queued ??= this.running
      .then(
        () => undefined,
        () => undefined,
      )
      .then(() => {
        this.queued = undefined;
        return this.start();
      });
    return this.queued;
  }

  private start(): Promise<ObservedState> {
    this.count++;
    const p = this.backend.observe().finally(() => {
      if (this.running === p) this.running = undefined;
    });
    this.running = p;
    return p;
  }
}
