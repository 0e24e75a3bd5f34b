import { backoffMs, type Backoff } from '../../backoff.js';
import type { Lvol } from '../../spdk/schemas.js';
import { BackendError } from '../types.js';
import type { SpdkContext } from './context.js';
import { toBackendError } from './errors.js';
import { diskBaseName, diskHydrateName, diskSourceControllerName, lazyGoldenName, lazyHydrateName, peerControllerName } from './naming.js';
import { pathState, type RemoteSources } from './remote-sources.js';

/**
 * The background copies that make lazy objects whole (hydration), as this process runs them:
 * one task per image and per disk, retried with backoff while its source is unreachable
 * (paused), failed on anything else; and how far a copy got (allocated clusters).
 */

const RETRY: Backoff = { initialMs: 500, maxMs: 30_000 };

export interface Hydration {
  state: 'hydrating' | 'paused' | 'failed';
  message?: string;
  /** Since when (ms since the epoch) its source has been unreachable, while it is. */
  unreachableSince?: number;
  task: Promise<void>;
}

export class Hydrations {
  /** Running (or failed) hydrations of lazy goldens, by image name; their source is `peerControllerName`. */
  readonly images = new Map<string, Hydration>();
  /** Running (or failed) hydrations of lazy disks, by disk id; their source is `diskSourceControllerName`. */
  readonly disks = new Map<string, Hydration>();

  constructor(
    private readonly ctx: SpdkContext,
    private readonly sources: RemoteSources,
  ) {}

  /** Starts `step` as the hydration of `key` in `runs` unless one runs; a finished one leaves the map, a failed one stays. */
  start(runs: Map<string, Hydration>, key: string, what: string, step: () => Promise<void>): void {
    if (runs.has(key)) return;
    const h: Hydration = { state: 'hydrating', task: Promise.resolve() };
    h.task = this.retrying(h, what, step).finally(() => {
      if (runs.get(key) === h && h.state !== 'failed') runs.delete(key);
    });
    runs.set(key, h);
  }

  /** Runs `step` until it succeeds; transient failures pause it (with backoff), others fail it. */
  private async retrying(h: Hydration, what: string, step: () => Promise<void>): Promise<void> {
    const signal = this.ctx.lifetime.signal;
    for (let attempt = 0; !signal.aborted; attempt++) {
      try {
        await step();
        h.state = 'hydrating';
        delete h.message;
        delete h.unreachableSince;
        return;
      } catch (e) {
        if (signal.aborted) return;
        const err = e instanceof BackendError ? e : toBackendError(e, what);
        // EIO from an inflate: the source went away mid-copy. Resumable: it copies what is missing.
        const transient = err.transient || /Input\/output error|unreachable/i.test(err.message);
        if (!transient) {
          h.state = 'failed';
          h.message = `hydration failed: ${err.message}`;
          this.ctx.log.warn({ event: 'lazy.hydrate.failed', what, kind: err.kind, err: err.message }, 'hydration failed');
          return;
        }
        h.state = 'paused';
        h.message = `hydration paused (${err.message})`;
        this.ctx.log.warn({ event: 'lazy.hydrate.paused', what, attempt, err: err.message }, 'hydration paused; retrying');
        await abortableSleep(backoffMs(attempt + 1, RETRY), signal);
      }
    }
  }

  /** bdev_lvol_inflate; a reconnecting source answers it late (paused), a failed one with EIO. */
  async inflate(alias: string, controller: string, what: string): Promise<void> {
    try {
      await this.ctx.inflate(alias);
    } catch (e) {
      const state = await this.sources.state(controller);
      const err = toBackendError(e, `${what}: inflating ${alias}`);
      if (state !== undefined && state !== 'enabled') throw new BackendError(`${err.message}; source ${state} (unreachable)`, 'transport', { cause: e });
      throw err;
    }
  }

  /**
   * A source that went away does not fail a running inflate (the controller reconnects and the
   * copy waits): look at the controllers of running hydrations and call those 'paused'.
   */
  async refreshSourceStates(): Promise<void> {
    if (this.images.size === 0 && this.disks.size === 0) return;
    let ctrls: Array<{ name: string; ctrlrs: Array<{ state?: string | undefined }> }>;
    try {
      ctrls = await this.ctx.api.bdevNvmeGetControllers();
    } catch {
      return;
    }
    const stateOf = (name: string): string | undefined => pathState(ctrls.find((c) => c.name === name)?.ctrlrs);
    const mark = (h: Hydration, controller: string): void => {
      if (h.state === 'failed') return;
      const state = stateOf(controller);
      if (state !== undefined && state !== 'enabled') {
        h.state = 'paused';
        h.message = `hydration paused (source ${controller}: ${state})`;
        h.unreachableSince ??= Date.now();
      } else if (h.state === 'paused' && h.message?.startsWith('hydration paused (source ') === true) {
        h.state = 'hydrating';
        delete h.message;
        delete h.unreachableSince;
      }
    };
    for (const [name, h] of this.images) mark(h, peerControllerName(name));
    for (const [id, h] of this.disks) mark(h, diskSourceControllerName(id));
  }

  /** Resolves once every running hydration ends (tests, close()). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.images.values(), ...this.disks.values()].map((h) => h.task));
  }
}

/** Percent of a lazy image already local: the hydration clone's allocated clusters (v24.09+ lists them). */
export function hydratedPercent(lvols: readonly Lvol[], image: string, sizeBytes: number, clusterBytes: number): number | undefined {
  const hyd = lvols.find((l) => l.name === lazyHydrateName(image)) ?? lvols.find((l) => l.name === lazyGoldenName(image));
  const allocated = (hyd as { num_allocated_clusters?: unknown } | undefined)?.num_allocated_clusters;
  const total = Math.ceil(sizeBytes / clusterBytes);
  if (typeof allocated !== 'number' || total === 0) return hyd ? undefined : 0;
  return Math.min(100, Math.floor((allocated * 100) / total));
}

/** Percent of a lazy disk already local: 100 once its hydrated snapshot stands alone, else the helper's allocated clusters. */
export function diskPercent(lvols: readonly Lvol[], id: string, clusters: number): number {
  if (lvols.some((l) => l.name === diskBaseName(id)) && !lvols.some((l) => l.name === diskHydrateName(id))) return 100;
  const hyd = lvols.find((l) => l.name === diskHydrateName(id)) as { num_allocated_clusters?: unknown } | undefined;
  if (typeof hyd?.num_allocated_clusters !== 'number' || clusters === 0) return 0;
  return Math.min(99, Math.floor((hyd.num_allocated_clusters * 100) / clusters));
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/** bdev_lvol_set_parent (v24.09+): a hydrated copy can be put under what read the source, which then detaches at once. */
export const canReparent = (ctx: SpdkContext): boolean => ctx.capabilities?.methods.has('bdev_lvol_set_parent') ?? false;
