import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../../log.js';
import { SpdkError } from '../../spdk/errors.js';
import type { Bdev } from '../../spdk/schemas.js';
import type { FetchOptions, fetchImage } from '../image-source.js';
import { BackendError, type ImageSpec, type ObservedImage } from '../types.js';
import type { SpdkContext } from './context.js';
import { toBackendError } from './errors.js';
import { fanoutsIn, type FanoutLvol, type FanoutLanes } from './fanout.js';
import { sha256File } from './file-source.js';
import type { LazyStore } from './lazy.js';
import type { LvstoreKeeper } from './lvstore.js';
import { checkImageName, classifyLvol, goldenName, importingName, lazyGoldenName, lvolAlias, sourceBdevName } from './naming.js';
import type { ImportProgress } from './observe.js';
import { lvolInfoOf, bdevSizeBytes } from './schemas.js';

export interface ImageFetcher {
  fetchImage: typeof fetchImage;
  fetchOptions: Omit<FetchOptions, 'signal' | 'logger'>;
}

/**
 * The node's image cache in the lvstore. Import: file -> `bdev_aio_create` ->
 * `bdev_lvol_clone_bdev` (`img-X-importing`) -> `bdev_lvol_inflate` -> `bdev_lvol_snapshot`
 * named `img-X` (the golden) -> delete the now-empty importing lvol and the aio bdev.
 * `ensureImage` resolves only once the golden exists, i.e. after hydration: v24.01 gives an
 * aio bdev a new UUID on every create and an esnap clone refers to that UUID, so a disk cloned
 * before inflate would lose its data source at the next spdk_tgt restart. A snapshot (not
 * set_read_only + rename) makes the golden: it appears under its final name in one step,
 * already read-only and cloneable, so a crash can never leave a `img-X` that is incomplete.
 */
export class ImageStore {
  /** Imports (and tidy-ups of finished ones) running in this process, shared by every caller. */
  private readonly imports = new Map<string, Promise<ObservedImage>>();
  /** What observe() reports of imports SPDK's listing cannot tell about (download, failure). */
  readonly progress = new Map<string, ImportProgress>();
  /** Exact sizes of images imported by this process (the golden is rounded up to clusters). */
  private readonly imageSizes = new Map<string, number>();
  /** Lazy images from peers (set by the backend). */
  lazy: LazyStore | undefined;

  constructor(
    private readonly ctx: SpdkContext,
    private readonly keeper: LvstoreKeeper,
    private readonly lanes: FanoutLanes,
    private readonly fetcher: ImageFetcher,
  ) {}

  /** The image's size as imported by this process, when it was. */
  exactSize(image: string): number | undefined {
    return this.imageSizes.get(image);
  }

  /** Resolves once no import runs (close() aborts them first). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.imports.values()]);
  }

  ensureImage(spec: ImageSpec, signal?: AbortSignal): Promise<ObservedImage> {
    checkImageName(spec.name);
    let shared = this.imports.get(spec.name);
    if (!shared) {
      shared = this.importOrLazy(spec).finally(() => this.imports.delete(spec.name));
      // Every caller may detach (below): the import's failure must never be an unhandled rejection.
      shared.catch(() => undefined);
      this.imports.set(spec.name, shared);
    }
    // The import is shared: one caller giving up detaches that caller, it does not cancel
    // the import the others wait for (close() cancels it).
    return signal ? detachOnAbort(shared, signal) : shared;
  }

  /**
   * A peer's golden (or an image already hydrating from one) goes lazy; so does a file on the
   * node when `lazyLocal` is set and the target keeps aio uuids (v24.09+); anything else is imported.
   */
  private async importOrLazy(spec: ImageSpec): Promise<ObservedImage> {
    const lazy = this.lazy;
    // An image already reading the node's file keeps it (a peer source would carry the same uuid).
    if (lazy && (await lazy.localRecord(spec.name))) return lazy.ensureFileImage(spec.name);
    if (lazy && (spec.peer !== undefined || (await lazy.hasImageRecord(spec.name)))) return lazy.ensureLazyImage(spec);
    if (lazy && this.ctx.cfg.lazyLocal) {
      await this.keeper.ready();
      if (lazy.canLazyLocal) return this.lazyFromFile(spec, lazy);
    }
    return this.importImage(spec);
  }

  /**
   * The image is fetched to the node's file as for an import (download or copy, sha256, inspect,
   * size limits), and that file becomes the source of a lazy golden: disks are made at once and
   * hydration copies the file into the lvstore underneath them (lazy-images.ts, file-source.ts).
   */
  private async lazyFromFile(spec: ImageSpec, lazy: LazyStore): Promise<ObservedImage> {
    const { ctx } = this;
    const name = spec.name;
    const log = ctx.log.child({ image: name });
    const file = ctx.imageFile(name);
    const lvols = await ctx.listLvols();
    const has = (lvolName: string): boolean => lvols.some((l) => l.name === lvolName);
    if (has(goldenName(name))) return this.importImage(spec); // tidies what an import left
    if (has(importingName(name))) {
      log.warn({ event: 'image.import.stale', lvol: importingName(name) }, 'half-made import found; the image goes lazy instead');
      await ctx.deleteLvol(lvolAlias(ctx.lvs, importingName(name)));
    }
    // A file left by an interrupted import was never recorded as a source: fetch (and verify) afresh.
    await this.dropSource(name, log, true);
    this.progress.set(name, { phase: 'importing', ...(spec.sizeBytes !== undefined ? { sizeBytes: spec.sizeBytes } : {}) });
    let made = false;
    try {
      const fetched = await this.fetchToNode(spec, file, log);
      const sizeBytes = fetched.sizeBytes;
      this.imageSizes.set(name, sizeBytes);
      ctx.lifetime.signal.throwIfAborted();
      // A raw image is on the node as fetched, so the fetch's digest covers it; a converted one
      // is hashed here. A restart checks the file against it before reading it again.
      const sha256 = spec.format === 'raw' && fetched.sha256 !== undefined ? fetched.sha256 : await sha256File(file, ctx.lifetime.signal);
      const cluster = ctx.lvstore.clusterBytes;
      const padded = Math.ceil(sizeBytes / cluster) * cluster;
      if (padded !== sizeBytes) await fs.truncate(file, padded);
      const img = await lazy.ensureFileImage(name, { local: true, sizeBytes: padded, sha256, dataBytes: sizeBytes });
      made = true;
      this.progress.delete(name);
      return img;
    } catch (e) {
      const err = toBackendError(e, `lazy image ${name} from its file`);
      if (!made && !(await ctx.listLvols().catch(() => [])).some((l) => l.name === lazyGoldenName(name))) {
        await lazy.deleteLazy(name).catch(() => undefined);
        await this.dropSource(name, log, true);
        this.progress.set(name, { phase: 'failed', message: err.message });
      }
      log.warn({ event: 'image.lazy.failed', kind: err.kind, err: err.message }, 'lazy image from file failed');
      throw err;
    }
  }

  private async importImage(spec: ImageSpec): Promise<ObservedImage> {
    const { ctx } = this;
    const name = spec.name;
    const log = ctx.log.child({ image: name });
    const signal = ctx.lifetime.signal;
    const importing = lvolAlias(ctx.lvs, importingName(name));
    const file = ctx.imageFile(name);
    await this.keeper.ready();
    const lvols = await ctx.listLvols();
    const has = (lvolName: string): boolean => lvols.some((l) => l.name === lvolName);

    if (has(goldenName(name))) {
      // Finished earlier; tidy what a crash after the snapshot may have left.
      if (has(importingName(name))) await ctx.deleteLvolQuietly(importing, log);
      await this.dropSource(name, log, true);
      this.progress.delete(name);
      return this.describeImage(name);
    }
    if (has(importingName(name))) {
      log.warn({ event: 'image.import.stale', lvol: importing }, 'half-made import found; redoing it');
      await ctx.deleteLvol(importing);
    }
    await this.dropSource(name, log, false);

    const started = Date.now();
    this.progress.set(name, { phase: 'importing', ...(spec.sizeBytes !== undefined ? { sizeBytes: spec.sizeBytes } : {}) });
    let goldenMade = false;
    try {
      const { sizeBytes } = await this.fetchToNode(spec, file, log);
      this.imageSizes.set(name, sizeBytes);
      this.progress.set(name, { phase: 'importing', sizeBytes });
      signal.throwIfAborted();
      // An esnap clone is sized in whole clusters; zero-pad so the aio bdev covers it all.
      const cluster = ctx.lvstore.clusterBytes;
      const padded = Math.ceil(sizeBytes / cluster) * cluster;
      if (padded !== sizeBytes) await fs.truncate(file, padded);

      await this.keeper.createImportSource(name, file);
      await ctx.api.bdevLvolCloneBdev({ bdev: sourceBdevName(name), lvs_name: ctx.lvs, clone_name: importingName(name) });
      signal.throwIfAborted();
      // Still 'importing' (no disk can clone it before the golden exists), only the message moves on.
      this.progress.set(name, { phase: 'importing', sizeBytes, message: 'copying into the lvstore' });
      log.info({ event: 'image.import.hydrate', sizeBytes }, 'inflating image into the lvstore');
      await ctx.inflate(importing, signal);
      await ctx.api.bdevLvolSnapshot({ lvol_name: importing, snapshot_name: goldenName(name) });
      goldenMade = true;
      // The importing lvol is now an empty clone of the golden; the aio bdev has no users.
      await ctx.deleteLvolQuietly(importing, log);
      await this.dropSource(name, log, true);
      this.progress.delete(name);
      log.info({ event: 'image.import.done', sizeBytes, ms: Date.now() - started }, 'image cached');
      return await this.describeImage(name);
    } catch (e) {
      const err = toBackendError(e, `importing image ${name}`);
      if (!goldenMade) {
        await ctx.deleteLvolQuietly(importing, log);
        await this.dropSource(name, log, false);
        this.progress.set(name, { phase: 'failed', message: err.message });
      }
      log.warn({ event: 'image.import.failed', kind: err.kind, err: err.message }, 'image import failed');
      throw err;
    }
  }

  /**
   * A crash after the golden was made can leave its importing lvol, aio source bdev and
   * downloaded file behind; the golden reads as ready, so no ensureImage comes to tidy them.
   * Tidied here, in the background, registered as the image's import (deleteImage waits).
   */
  tidyFinishedImports(lvols: ReadonlyArray<{ name: string }>, bdevs: ReadonlyArray<{ name: string }>): void {
    const { ctx } = this;
    const names = new Set(lvols.map((l) => l.name));
    const bdevNames = new Set(bdevs.map((b) => b.name));
    for (const l of lvols) {
      const role = classifyLvol(l.name);
      if (role.role !== 'golden' || this.imports.has(role.image)) continue;
      const image = role.image;
      if (!names.has(importingName(image)) && !bdevNames.has(sourceBdevName(image))) continue;
      const log = ctx.log.child({ image });
      const tidy = (async () => {
        // A lazy golden over the file may still name the aio bdev: its hydration drops it.
        if (await this.lazy?.localRecord(image).catch(() => undefined)) return this.describeImage(image);
        log.warn({ event: 'image.import.leftover' }, 'tidying what an interrupted import left next to its golden');
        await ctx.deleteLvolQuietly(lvolAlias(ctx.lvs, importingName(image)), log);
        await this.dropSource(image, log, true);
        return this.describeImage(image);
      })().finally(() => this.imports.delete(image));
      tidy.catch(() => undefined);
      this.imports.set(image, tidy);
    }
  }

  /** A complete file at `file` (from an interrupted import) is reused: fetch renames atomically. */
  private async fetchToNode(spec: ImageSpec, file: string, log: Logger): Promise<{ sizeBytes: number; sha256?: string }> {
    try {
      const st = await fs.stat(file);
      log.info({ event: 'image.fetch.reuse', file, sizeBytes: st.size }, 'reusing downloaded image');
      return { sizeBytes: st.size };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    await fs.mkdir(path.dirname(file), { recursive: true });
    const fetched = await this.fetcher.fetchImage(spec, file, { ...this.fetcher.fetchOptions, signal: this.ctx.lifetime.signal, logger: log });
    return { sizeBytes: fetched.sizeBytes, sha256: fetched.sha256 };
  }

  /** Deletes the aio bdev of an import (and its file when asked). */
  private async dropSource(name: string, log: Logger, removeFile: boolean): Promise<void> {
    const { ctx } = this;
    const src = sourceBdevName(name);
    try {
      if (await ctx.getBdev(src)) await ctx.api.bdevAioDelete({ name: src });
    } catch (e) {
      if (!(e instanceof SpdkError && e.kind === 'notFound')) {
        log.warn({ event: 'image.source.delete_failed', bdev: src, err: String(e) }, 'could not delete aio bdev');
      }
    }
    if (removeFile) await fs.rm(ctx.imageFile(name), { force: true });
  }

  private async describeImage(name: string): Promise<ObservedImage> {
    const alias = lvolAlias(this.ctx.lvs, goldenName(name));
    const bdev = await this.ctx.getBdev(alias);
    if (!bdev) throw new BackendError(`image ${name}: golden lvol ${alias} vanished`, 'notFound');
    const clones = await this.imageDiskClones(name, bdev);
    return { name, phase: 'ready', sizeBytes: bdevSizeBytes(bdev), ref: alias, cloneCount: clones.length };
  }

  /** The image's fan-outs (and left-over fan-out clones), from the listing. */
  private async fanoutsOf(image: string): Promise<FanoutLvol[]> {
    return fanoutsIn(await this.ctx.listLvols(), image);
  }

  /** VM disks cloned from the golden, any of its fan-outs or its (repointed) lazy golden. */
  private async imageDiskClones(image: string, golden: Bdev): Promise<string[]> {
    const fanouts = (await this.fanoutsOf(image)).filter((f) => !f.tmp).map((f) => f.name);
    const bdevs = await Promise.all([...fanouts, lazyGoldenName(image)].map((n) => this.ctx.getBdev(lvolAlias(this.ctx.lvs, n))));
    return [golden, ...bdevs].flatMap((b) => (b ? diskClonesOf(b) : []));
  }

  async deleteImage(name: string): Promise<void> {
    const { ctx } = this;
    checkImageName(name);
    if (this.imports.has(name)) throw new BackendError(`image ${name}: an import is running`, 'busy');
    const log = ctx.log.child({ image: name });
    await this.keeper.ready();
    const golden = lvolAlias(ctx.lvs, goldenName(name));
    const bdev = await ctx.getBdev(golden);
    if (bdev) {
      const clones = await this.imageDiskClones(name, bdev);
      if (clones.length > 0) {
        throw new BackendError(`image ${name}: ${clones.length} disk(s) are clones of it (${clones.join(', ')})`, 'busy');
      }
    }
    if (this.lazy) {
      if (await this.lazy.isExported(name)) throw new BackendError(`image ${name}: it is exported to peers (unexport it first)`, 'busy');
      // Its lazy golden (a child of the golden once hydrated) goes first: see below.
      await this.lazy.deleteLazy(name);
    }
    this.lanes.forget(name);
    // Children first: deleting a snapshot with one clone would merge, not delete.
    await ctx.deleteLvolQuietly(lvolAlias(ctx.lvs, importingName(name)), log);
    const fanouts = await this.fanoutsOf(name);
    for (const f of fanouts.filter((x) => x.tmp)) await ctx.deleteLvol(lvolAlias(ctx.lvs, f.name));
    for (const f of fanouts.filter((x) => !x.tmp)) await ctx.deleteLvol(lvolAlias(ctx.lvs, f.name));
    if (bdev) await ctx.deleteLvol(golden);
    await this.dropSource(name, log, true);
    this.progress.delete(name);
    this.imageSizes.delete(name);
    log.info({ event: 'image.deleted' }, 'image deleted');
  }
}

/** The VM disks cloned from a golden image's lvol (an import's own lvol is not one). */
function diskClonesOf(golden: Bdev): string[] {
  return (lvolInfoOf(golden)?.clones ?? []).filter((c) => classifyLvol(c).role === 'disk');
}

function detachOnAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new BackendError('aborted by caller', 'transport', { cause: signal.reason }));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new BackendError('aborted by caller', 'transport', { cause: signal.reason }));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
