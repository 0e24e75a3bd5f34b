import type { ImageSpec, ObservedImage, StorageBackend } from '../backend/types.js';
import { silentLogger, type Logger } from '../log.js';
import { secondsSince, type Metrics } from '../metrics/metrics.js';
import type { ImagePeers } from './image-peers.js';
import type { BootProfiles } from './boot-profile.js';
import type { Journal } from './journal.js';

/**
 * The per-node image cache: import once, clone many (Cinder's image-volume cache, done with
 * thin clones). Eviction is least-recently-used under a size and a count limit, like Cinder's
 * image_volume_cache_max_size_gb / _max_count: evict LRU entries until both limits hold.
 */

export interface CacheLimits {
  /** Total virtual size of cached images; undefined = no limit. */
  maxSizeBytes?: number;
  /** Number of cached images; undefined = no limit. */
  maxCount?: number;
}

export interface CacheEntry {
  name: string;
  sizeBytes: number;
  /** Disks cloned from it: never evicted while > 0. */
  cloneCount: number;
  /** Last use, ms since epoch (0 when never recorded). */
  lastUse: number;
  /** Being imported or hydrated, or needed by a desired disk: never evicted. */
  pinned: boolean;
  /** False when the CachedImage is gone from the catalog: evicted as soon as it is unused. */
  inCatalog: boolean;
}

/**
 * Which images to evict, in eviction order. Pure. Entries that are pinned or have clones are
 * never chosen but still count against the limits (they take the space); entries no longer in
 * the catalog go first, then LRU (ties by name, so the result is deterministic).
 */
export function chooseEvictions(entries: readonly CacheEntry[], limits: CacheLimits): string[] {
  const evictable = (e: CacheEntry): boolean => e.cloneCount === 0 && !e.pinned;
  const out: string[] = [];
  let size = 0;
  let count = 0;
  for (const e of entries) {
    size += e.sizeBytes;
    count++;
  }
  const take = (e: CacheEntry): void => {
    out.push(e.name);
    size -= e.sizeBytes;
    count--;
  };
  for (const e of entries) if (!e.inCatalog && evictable(e)) take(e);
  const over = (): boolean =>
    (limits.maxSizeBytes !== undefined && size > limits.maxSizeBytes) || (limits.maxCount !== undefined && count > limits.maxCount);
  const lru = entries
    .filter((e) => e.inCatalog && evictable(e))
    .sort((a, b) => a.lastUse - b.lastUse || a.name.localeCompare(b.name));
  for (const e of lru) {
    if (!over()) break;
    take(e);
  }
  return out;
}

/** Images being imported or hydrating are "in import" for eviction purposes. */
export const importInProgress = (img: Pick<ObservedImage, 'phase'>): boolean => img.phase === 'importing' || img.phase === 'hydrating';

/**
 * Shares one import among all concurrent requests for the same image, and records use times
 * in the journal (so the LRU order survives restarts).
 */
export class ImageCache {
  private readonly inFlight = new Map<string, Promise<ObservedImage>>();

  constructor(
    private readonly backend: StorageBackend,
    private readonly journal: Journal,
    private readonly opts: { logger?: Logger; now?: () => number; metrics?: Metrics; peers?: ImagePeers; bootProfiles?: BootProfiles } = {},
  ) {}

  private get log(): Logger {
    return this.opts.logger ?? silentLogger;
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  /** Names with an import running in this process. */
  importing(name: string): boolean {
    return this.inFlight.has(name);
  }

  /** Imports the image unless cached; concurrent calls for one name share one import. */
  ensure(spec: ImageSpec, signal?: AbortSignal): Promise<ObservedImage> {
    const running = this.inFlight.get(spec.name);
    if (running) return running;
    const p = (async () => {
      const op = await this.journal.intent('ensureImage', spec.name);
      const t0 = this.now();
      const started = process.hrtime.bigint();
      let img: ObservedImage;
      try {
        // With peers, the source is chosen (a peer's golden, the next one on failure, a seed's, the origin).
        const peers = this.opts.peers;
        // A boot profile another node published: a lazy golden hydrates those ranges first.
        const withProfile = this.opts.bootProfiles?.withProfile(spec) ?? spec;
        img = peers ? await peers.ensure(withProfile, (s) => this.backend.ensureImage(s, signal), signal) : await this.backend.ensureImage(withProfile, signal);
      } catch (e) {
        this.opts.metrics?.imageImportDuration.observe({ outcome: 'error' }, secondsSince(started));
        // The call is over: a failed import must not stay "pending" (one more per retry, replayed at every start).
        await this.journal.done(op);
        throw e;
      }
      this.opts.metrics?.imageImportDuration.observe({ outcome: img.phase === 'failed' ? 'failed' : 'ok' }, secondsSince(started));
      await this.journal.done(op, (s) => {
        s.imageLastUse[spec.name] = this.now();
      });
      this.log.info({ event: 'image-ready', image: spec.name, phase: img.phase, sizeBytes: img.sizeBytes, durationMs: this.now() - t0 }, 'image cached');
      return img;
    })().finally(() => this.inFlight.delete(spec.name));
    this.inFlight.set(spec.name, p);
    return p;
  }

  /** Records that a disk was cloned from the image (moves it to the end of the LRU order). */
  async touch(name: string): Promise<void> {
    await this.journal.update((s) => {
      s.imageLastUse[name] = this.now();
    });
  }

  async evict(name: string): Promise<void> {
    const op = await this.journal.intent('evictImage', name);
    try {
      await this.backend.deleteImage(name);
    } catch (e) {
      // The call is over: a failed eviction must not stay "pending" (replayed at every start).
      await this.journal.done(op);
      throw e;
    }
    await this.journal.done(op, (s) => {
      delete s.imageLastUse[name];
    });
    this.opts.metrics?.imageCacheEvictions.inc();
    this.log.info({ event: 'image-evicted', image: name }, 'image evicted from the cache');
  }
}
