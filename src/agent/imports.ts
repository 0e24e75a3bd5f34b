import { BackendError, type ImageSpec } from '../backend/types.js';
import type { Logger } from '../log.js';
import type { ImageCache } from './image-cache.js';
import { backoffMs } from './retry.js';

/**
 * Image imports running beside the reconcile rounds, never inside one: a slow download must
 * not hold up other disks. One import per image at a time; the failure of the last one is
 * kept so that every disk of that image reports it until its backoff (250 ms, doubling to
 * 30 s) has passed, then the next round retries.
 */

const IMPORT_BACKOFF = { initialMs: 250, maxMs: 30_000 };

export interface ImportFailure {
  error: unknown;
  /** Still within its backoff: not retried yet. */
  backingOff: boolean;
}

export class BackgroundImports {
  private readonly running = new Map<string, Promise<void>>();
  private readonly failures = new Map<string, { error: unknown; at: number; failures: number }>();
  /** Aborts the imports when the agent stops (a crawling download must not hold the process). */
  private readonly lifetime = new AbortController();
  /** Imports ended so far (a round that saw one end has a newer picture to plan from). */
  ended = 0;

  constructor(
    private readonly deps: {
      images: ImageCache;
      /** Retries busy/transport errors (the executor's policy). */
      retry: <T>(what: string, fn: () => Promise<T>, log: Logger) => Promise<T>;
      /** An import ended (ready or failed): time for another round. */
      onSettled?: (image: string) => void;
    },
  ) {}

  has(image: string): boolean {
    return this.running.has(image);
  }

  /** The last import's failure, if it failed. Real time on purpose: a backoff is about the world outside, not the agent's clock. */
  failure(image: string): ImportFailure | undefined {
    const f = this.failures.get(image);
    return f && { error: f.error, backingOff: Date.now() - f.at < backoffMs(f.failures, IMPORT_BACKOFF) };
  }

  /** Settles when the imports running now have ended (undefined when none runs). */
  settled(): Promise<void> | undefined {
    if (this.running.size === 0) return undefined;
    return Promise.all(this.running.values()).then(() => undefined);
  }

  /** Stops the imports and waits until they have ended. */
  async stop(): Promise<void> {
    this.lifetime.abort();
    await this.settled();
  }

  private recordFailure(name: string, error: unknown): void {
    const failures = (this.failures.get(name)?.failures ?? 0) + 1;
    this.failures.set(name, { error, at: Date.now(), failures });
  }

  start(spec: ImageSpec, log: Logger): void {
    const job = this.deps
      .retry(`ensureImage ${spec.name}`, () => this.deps.images.ensure(spec, this.lifetime.signal), log)
      .then(
        (img) => {
          // A ready image's size is checked against each disk's capacity by the next plan.
          if (img.phase === 'failed') this.recordFailure(spec.name, new BackendError(`image ${spec.name} failed to import: ${img.message ?? 'unknown cause'}`, 'internal'));
          else this.failures.delete(spec.name);
        },
        (e: unknown) => this.recordFailure(spec.name, e),
      )
      .finally(() => {
        this.running.delete(spec.name);
        this.ended++;
        this.deps.onSettled?.(spec.name);
      })
      .catch(() => undefined);
    this.running.set(spec.name, job);
  }
}
