import type { RemoteDiskRef } from '../remote.js';
import type { DiskHydration, ImageExportOptions, ImageSpec, ObservedDisk, ObservedImage } from '../types.js';
import type { SpdkContext } from './context.js';
import { FileSources } from './file-source.js';
import { Hydrations, type Hydration } from './hydration.js';
import { ImageExports } from './image-export.js';
import { LazyDisks } from './lazy-disks.js';
import { LazyImages } from './lazy-images.js';
import { LazyRecords, type LocalRecord } from './lazy-records.js';
import type { LvstoreKeeper } from './lvstore.js';
import { diskSourceControllerName, peerControllerName } from './naming.js';
import { RemoteSources } from './remote-sources.js';
import { retargetImage } from './retarget.js';

/**
 * Lazy images and lazy disks on spdk_tgt (see naming.ts for the objects), and the image
 * exports peers read them from. One object for the backend; each story has its own module:
 *
 * - remote-sources.ts  another node's export attached as an NVMe controller, and its checks;
 * - file-source.ts     the node's own file as a lazy golden's source (`lazyLocal`);
 * - lazy-images.ts     lazy goldens and their hydration (helper clone, inflate, set_parent, detach);
 * - lazy-disks.ts      lazy disks of a migration target and their hydration;
 * - hydration.ts       the background copies: retries, paused sources, progress;
 * - retarget.ts        switching a lazy golden to another peer's export;
 * - lazy-records.ts    the record per object under `<stateDir>/lazy/`, what SPDK cannot tell
 *                      after its own restart (which export a degraded clone reads);
 * - image-export.ts    a hydrated golden served to peers;
 * - here: restart recovery (re-attach recorded sources, resume their hydrations).
 */
export class LazyStore {
  private readonly records: LazyRecords;
  private readonly sources: RemoteSources;
  private readonly runs: Hydrations;
  private readonly files: FileSources;
  private readonly lazyImages: LazyImages;
  private readonly lazyDisks: LazyDisks;
  private readonly exports: ImageExports;

  constructor(
    private readonly ctx: SpdkContext,
    keeper: LvstoreKeeper,
  ) {
    this.records = new LazyRecords(ctx.cfg.stateDir);
    this.sources = new RemoteSources(ctx);
    this.runs = new Hydrations(ctx, this.sources);
    this.files = new FileSources(ctx, this.records);
    this.lazyImages = new LazyImages(ctx, keeper, this.records, this.sources, this.files, this.runs);
    this.lazyDisks = new LazyDisks(ctx, keeper, this.records, this.sources, this.runs);
    this.exports = new ImageExports(ctx, keeper);
  }

  // ---- restart recovery -----------------------------------------------------------------------

  /**
   * After a spdk_tgt restart, clones of a source that is not attached load degraded: attach
   * every recorded source again (same namespace UUID), so they come back by themselves.
   */
  async reattachAll(): Promise<void> {
    for (const r of await this.records.list()) {
      if (r.kind === 'local') {
        const local = await this.records.readLocal(r.name).catch(() => undefined);
        if (!local) continue;
        await this.files.make(r.name, local).catch((e: unknown) => {
          this.ctx.log.warn({ event: 'lazy.source.recreate_failed', image: r.name, err: String(e) }, 'file source not made again; retried by hydration');
        });
        continue;
      }
      const rec = await this.records.read(r.kind, r.name).catch(() => undefined);
      if (!rec) continue;
      const controller = r.kind === 'image' ? peerControllerName(r.name) : diskSourceControllerName(r.name);
      await this.sources.attach(controller, rec.ref, `lazy ${r.kind} ${r.name}`).catch((e: unknown) => {
        this.ctx.log.warn({ event: 'lazy.source.reattach_failed', controller, err: String(e) }, 'source not reachable yet; retried by hydration');
      });
    }
  }

  /** Starts hydration of every recorded image (and disk asked to hydrate) that no task runs for. */
  async resume(): Promise<void> {
    for (const r of await this.records.list()) {
      if (r.kind === 'local' && !this.runs.images.has(r.name)) {
        const rec = await this.records.readLocal(r.name).catch(() => undefined);
        if (rec) this.lazyImages.startHydration(r.name, { kind: 'file', rec });
      } else if (r.kind === 'image' && !this.runs.images.has(r.name)) {
        const rec = await this.records.read('image', r.name).catch(() => undefined);
        if (rec) this.lazyImages.startHydration(r.name, { kind: 'peer', ref: rec.ref });
      } else if (r.kind === 'disk' && !this.runs.disks.has(r.name)) {
        const rec = await this.records.read('disk', r.name).catch(() => undefined);
        if (rec?.hydrate) this.lazyDisks.startHydration(r.name, rec.ref);
      }
    }
  }

  // ---- lazy goldens ---------------------------------------------------------------------------

  /** Whether image `name` has a lazy record (it is or was hydrating from a peer). */
  async hasImageRecord(name: string): Promise<boolean> {
    return (await this.records.read('image', name)) !== undefined;
  }

  /** The record of a lazy golden over the node's file, if image `name` is or was hydrating from one. */
  localRecord(name: string): Promise<LocalRecord | undefined> {
    return this.records.readLocal(name);
  }

  /** Lazy goldens over a local file need a stable aio uuid (v24.09+) and set_parent. */
  get canLazyLocal(): boolean {
    return this.lazyImages.canLazyLocal;
  }

  ensureLazyImage(spec: ImageSpec): Promise<ObservedImage> {
    return this.lazyImages.ensureLazyImage(spec);
  }

  ensureFileImage(name: string, given?: LocalRecord): Promise<ObservedImage> {
    return this.lazyImages.ensureFileImage(name, given);
  }

  retargetImage(name: string, ref: RemoteDiskRef): Promise<void> {
    return retargetImage(this.ctx, this.records, this.sources, name, ref);
  }

  deleteLazy(name: string): Promise<void> {
    return this.lazyImages.deleteLazy(name);
  }

  imageMessages(): Map<string, { message?: string; failed: boolean; unreachableSince?: number }> {
    return this.lazyImages.imageMessages();
  }

  /** Whether a hydration task for the image runs (deleteImage refuses). */
  imageBusy(name: string): boolean {
    return this.lazyImages.imageBusy(name);
  }

  // ---- hydrations -----------------------------------------------------------------------------

  refreshSourceStates(): Promise<void> {
    return this.runs.refreshSourceStates();
  }

  /** Resolves once the running hydrations end (tests, close()). */
  settled(): Promise<void> {
    return this.runs.settled();
  }

  // ---- image exports to peers -----------------------------------------------------------------

  exportImage(name: string, opts: ImageExportOptions): Promise<RemoteDiskRef> {
    return this.exports.exportImage(name, opts);
  }

  unexportImage(name: string): Promise<void> {
    return this.exports.unexportImage(name);
  }

  peerReaders(): Promise<Map<string, number>> {
    return this.exports.peerReaders();
  }

  isExported(name: string): Promise<boolean> {
    return this.exports.isExported(name);
  }

  // ---- lazy disks (migration) -----------------------------------------------------------------

  cloneRemoteDisk(ref: RemoteDiskRef, id: string): Promise<ObservedDisk> {
    return this.lazyDisks.cloneRemoteDisk(ref, id);
  }

  hydrateDisk(id: string, imageState: (image: string) => Promise<DiskHydration | undefined>): Promise<DiskHydration> {
    return this.lazyDisks.hydrateDisk(id, imageState);
  }

  forgetDisk(id: string): Promise<void> {
    return this.lazyDisks.forgetDisk(id);
  }

  diskState(id: string): Hydration['state'] | undefined {
    return this.lazyDisks.diskState(id);
  }
}
