import { SpdkError } from '../../spdk/errors.js';
import type { Bdev } from '../../spdk/schemas.js';
import type { RemoteDiskRef } from '../remote.js';
import { BackendError, type ImageSpec, type ObservedImage } from '../types.js';
import type { SpdkContext } from './context.js';
import { toBackendError } from './errors.js';
import type { FileSources } from './file-source.js';
import { canReparent, hydratedPercent, type Hydrations } from './hydration.js';
import { imageUuid } from './image-export.js';
import type { LazyRecords, LocalRecord } from './lazy-records.js';
import type { LvstoreKeeper } from './lvstore.js';
import { checkImageName, classifyLvol, goldenName, lazyBaseName, lazyGoldenName, lazyHydrateName, lvolAlias, peerControllerName } from './naming.js';
import type { RemoteSources } from './remote-sources.js';
import { bdevSizeBytes, lvolInfoOf } from './schemas.js';

/** Where a lazy golden reads its unread blocks from. */
export type ImageSource = { kind: 'peer'; ref: RemoteDiskRef } | { kind: 'file'; rec: LocalRecord };

/**
 * Lazy goldens: `img-<image>.lazy` is a read-only external-snapshot clone of its source (a
 * peer's export attached as `lzi-<image>n1`, whose UUID is the image's id, or the node's own
 * file as an aio bdev with that id), and disks clone it at once.
 *
 * Hydration, leak-free (v24.09+, bdev_lvol_set_parent): a helper clone `img-<image>.hyd` that
 * no VM reads is inflated and snapshotted as the golden `img-<image>`; the lazy golden is then
 * repointed onto the golden, so no thread keeps an I/O channel to the NVMe bdev, and the
 * controller detaches at once. Inflating the lazy golden itself would leave every VM thread
 * that read through it holding a channel: detach answers -110 and leaks until those VMs stop.
 * v24.01 has no set_parent: there the lazy golden is inflated in place and renamed (the
 * detach may then wait for running VMs, which SPDK finishes on its own when they stop).
 */
export class LazyImages {
  constructor(
    private readonly ctx: SpdkContext,
    private readonly keeper: LvstoreKeeper,
    private readonly records: LazyRecords,
    private readonly sources: RemoteSources,
    private readonly files: FileSources,
    private readonly runs: Hydrations,
  ) {}

  /** Lazy goldens over a local file need a stable aio uuid (v24.09+) and set_parent. */
  get canLazyLocal(): boolean {
    return (this.ctx.capabilities?.aioUuid ?? false) && canReparent(this.ctx);
  }

  /** ensureImage for a peer's golden (or an image with a record): lazy golden now, hydration after. */
  async ensureLazyImage(spec: ImageSpec): Promise<ObservedImage> {
    const { ctx } = this;
    const name = spec.name;
    checkImageName(name);
    const log = ctx.log.child({ image: name });
    await this.keeper.ready();
    const rec = await this.records.read('image', name);
    const ref = spec.peer ?? rec?.ref;
    if (!ref) throw new BackendError(`image ${name}: no peer to read it from`, 'invalid');
    if (ref.transport !== 'nvmf-tcp') throw new BackendError(`image ${name}: peer: spdk reads NVMe-oF/TCP exports only, not ${ref.transport}`, 'invalid');
    const lvols = await ctx.listLvols();
    const has = (n: string): boolean => lvols.some((l) => l.name === n);
    if (has(goldenName(name))) {
      if (rec || has(lazyGoldenName(name))) this.startHydration(name, { kind: 'peer', ref }); // finishes the repoint and detach
      return this.describe(name);
    }
    await this.records.write('image', name, ref);
    const controller = peerControllerName(name);
    if (rec && JSON.stringify(rec.ref) !== JSON.stringify(ref) && !has(lazyGoldenName(name))) {
      // Another peer before anything reads through the old one: the old controller goes.
      log.info({ event: 'lazy.peer.changed', to: `${ref.host}:${ref.port}` }, 'reading the image from another peer');
      await this.sources.detach(controller, log);
    }
    const src = await this.sources.attach(controller, ref, `image ${name}`);
    if (src.uuid !== imageUuid(name)) {
      throw new BackendError(`image ${name}: the peer export's namespace id ${src.uuid} is not the image's id ${imageUuid(name)} (a different image?)`, 'invalid');
    }
    const sizeBytes = bdevSizeBytes(src);
    if (spec.sizeBytes !== undefined && spec.sizeBytes > sizeBytes) {
      throw new BackendError(`image ${name}: the peer's golden is ${sizeBytes} bytes, smaller than the declared ${spec.sizeBytes}`, 'invalid');
    }
    const lazyAlias = lvolAlias(ctx.lvs, lazyGoldenName(name));
    if (has(lazyBaseName(name))) await ctx.deleteLvol(lvolAlias(ctx.lvs, lazyBaseName(name)));
    if (!has(lazyGoldenName(name))) {
      await ctx.api.bdevLvolCloneBdev({ bdev: src.name, lvs_name: ctx.lvs, clone_name: lazyGoldenName(name) }).catch((e: unknown) => {
        throw toBackendError(e, `image ${name}: external-snapshot clone of ${src.name}`);
      });
    }
    // Read-only makes it cloneable; again after a crash between the two (it answers true twice).
    // Not a snapshot of the clone: on real v25.09 a snapshot of an esnap clone whose NVMe
    // source was attached with ctrlr_loss_timeout_sec never answers (its I/O qpair never connects).
    await ctx.snapshotLocks.run(lazyAlias, () => ctx.api.bdevLvolSetReadOnly({ name: lazyAlias })).catch((e: unknown) => {
      throw toBackendError(e, `image ${name}: making the lazy golden read-only`);
    });
    if (!has(lazyGoldenName(name))) log.info({ event: 'image.lazy.ready', sizeBytes, peer: `${ref.host}:${ref.port}` }, 'lazy golden ready: disks boot from the peer while it hydrates');
    this.startHydration(name, { kind: 'peer', ref });
    return this.describe(name);
  }

  /**
   * ensureImage for an image already on the node as a file (`ctx.imageFile`, verified by the
   * fetch; `rec` carries its digest and padded size): the aio bdev over it gets the image id as
   * uuid, so the lazy golden's clones find it again after a spdk_tgt restart; disks clone the
   * lazy golden at once and hydration copies the file into the lvstore underneath them.
   */
  async ensureFileImage(name: string, given?: LocalRecord): Promise<ObservedImage> {
    const { ctx } = this;
    checkImageName(name);
    const log = ctx.log.child({ image: name });
    await this.keeper.ready();
    if (!this.canLazyLocal) throw new BackendError(`image ${name}: spdk ${ctx.capabilities?.version ?? '?'} cannot keep an aio bdev's uuid; a local file is imported in full`, 'invalid');
    const rec = given ?? (await this.records.readLocal(name));
    if (!rec) throw new BackendError(`image ${name}: no local file recorded to read it from`, 'invalid');
    const lvols = await ctx.listLvols();
    const has = (n: string): boolean => lvols.some((l) => l.name === n);
    if (has(goldenName(name))) {
      this.startHydration(name, { kind: 'file', rec }); // finishes the repoint and drops the file
      return this.describe(name);
    }
    if (given) await this.records.writeLocal(name, rec);
    const src = await this.files.make(name, rec, given !== undefined);
    const lazyAlias = lvolAlias(ctx.lvs, lazyGoldenName(name));
    if (!has(lazyGoldenName(name))) {
      await ctx.api.bdevLvolCloneBdev({ bdev: src.name, lvs_name: ctx.lvs, clone_name: lazyGoldenName(name) }).catch((e: unknown) => {
        throw toBackendError(e, `image ${name}: external-snapshot clone of ${src.name}`);
      });
    }
    await ctx.snapshotLocks.run(lazyAlias, () => ctx.api.bdevLvolSetReadOnly({ name: lazyAlias })).catch((e: unknown) => {
      throw toBackendError(e, `image ${name}: making the lazy golden read-only`);
    });
    if (!has(lazyGoldenName(name))) log.info({ event: 'image.lazy.ready', sizeBytes: rec.sizeBytes, source: 'file' }, 'lazy golden ready: disks boot from the node\'s file while it hydrates');
    this.startHydration(name, { kind: 'file', rec });
    return this.describe(name);
  }

  /** Image entry for ensureImage: the golden when it exists, else the lazy golden. */
  private async describe(name: string): Promise<ObservedImage> {
    const { ctx } = this;
    const lvols = await ctx.listLvols();
    const golden = await ctx.getBdev(lvolAlias(ctx.lvs, goldenName(name)));
    const lazy = await ctx.getBdev(lvolAlias(ctx.lvs, lazyGoldenName(name)));
    const disks = (b: Bdev | undefined): number => (lvolInfoOf(b ?? ({ driver_specific: {} } as Bdev))?.clones ?? []).filter((c) => classifyLvol(c).role === 'disk').length;
    if (golden) {
      return { name, phase: 'ready', sizeBytes: bdevSizeBytes(golden), ref: lvolAlias(ctx.lvs, goldenName(name)), cloneCount: disks(golden) + disks(lazy) };
    }
    if (!lazy) throw new BackendError(`image ${name}: neither golden nor lazy golden exists`, 'notFound');
    const h = this.runs.images.get(name);
    const percent = hydratedPercent(lvols, name, bdevSizeBytes(lazy), ctx.lvstore.clusterBytes);
    return {
      name,
      phase: h?.state === 'failed' ? 'failed' : 'hydrating',
      sizeBytes: bdevSizeBytes(lazy),
      ref: lvolAlias(ctx.lvs, lazyGoldenName(name)),
      cloneCount: disks(lazy),
      ...(percent !== undefined ? { hydratedPercent: percent } : {}),
      ...(h?.message !== undefined ? { message: h.message } : {}),
    };
  }

  /** What observe() adds for a lazy image: message (paused, failed) of the running hydration. */
  imageMessages(): Map<string, { message?: string; failed: boolean; unreachableSince?: number }> {
    return new Map(
      [...this.runs.images].map(([k, h]) => [
        k,
        { ...(h.message !== undefined ? { message: h.message } : {}), failed: h.state === 'failed', ...(h.state === 'paused' && h.unreachableSince !== undefined ? { unreachableSince: h.unreachableSince } : {}) },
      ]),
    );
  }

  /** Whether a hydration task for the image runs (deleteImage refuses). */
  imageBusy(name: string): boolean {
    return this.runs.images.has(name);
  }

  /** Starts the hydration of image `name` from `source` unless one runs (resume after a restart, too). */
  startHydration(name: string, source: ImageSource): void {
    this.runs.start(this.runs.images, name, `image ${name}`, () => this.hydrate(name, source));
  }

  private async hydrate(name: string, source: ImageSource): Promise<void> {
    const { ctx } = this;
    const log = ctx.log.child({ image: name });
    await this.keeper.ready();
    const lvols = await ctx.listLvols();
    const has = (n: string): boolean => lvols.some((l) => l.name === n);
    const goldenAlias = lvolAlias(ctx.lvs, goldenName(name));
    const lazyAlias = lvolAlias(ctx.lvs, lazyGoldenName(name));
    const controller = peerControllerName(name);
    const started = Date.now();
    if (!has(goldenName(name))) {
      const src = source.kind === 'peer' ? await this.sources.attach(controller, source.ref, `image ${name}`) : await this.files.make(name, source.rec);
      const hyd = lvolAlias(ctx.lvs, lazyHydrateName(name));
      if (!has(lazyHydrateName(name))) {
        await ctx.api.bdevLvolCloneBdev({ bdev: src.name, lvs_name: ctx.lvs, clone_name: lazyHydrateName(name) }).catch((e: unknown) => {
          throw toBackendError(e, `image ${name}: hydration clone of ${src.name}`);
        });
      }
      log.info({ event: 'image.hydrate.start' }, 'hydrating the lazy golden');
      await this.runs.inflate(hyd, controller, `image ${name}`);
      await ctx.api.bdevLvolSnapshot({ lvol_name: hyd, snapshot_name: goldenName(name) }).catch((e: unknown) => {
        throw toBackendError(e, `image ${name}: snapshot of the hydrated copy`);
      });
      await ctx.snapshotLocks.run(goldenAlias, () => ctx.deleteLvol(hyd));
      log.info({ event: 'image.hydrate.done', ms: Date.now() - started }, 'image hydrated');
    }
    // The golden exists: repoint what still reads through the peer, then let the peer go.
    const after = await ctx.listLvols();
    if (after.some((l) => l.name === lazyGoldenName(name))) {
      const lazy = await ctx.getBdev(lazyAlias);
      const info = lazy ? lvolInfoOf(lazy) : undefined;
      if (!lazy) throw new BackendError(`image ${name}: the lazy golden has no bdev (degraded: its source is not attached)`, 'transport');
      const clones = info?.clones ?? [];
      if (clones.length === 0) {
        // Under the lock disks clone it with, and only if still nobody's parent.
        await ctx.snapshotLocks.run(lazyAlias, async () => {
          const now = await ctx.getBdev(lazyAlias);
          if (now && (lvolInfoOf(now)?.clones ?? []).length === 0) await ctx.deleteLvol(lazyAlias);
        });
      } else if (canReparent(ctx)) {
        if (info?.base_snapshot !== goldenName(name)) {
          await ctx.snapshotLocks.run(lazyAlias, () => ctx.api.bdevLvolSetParent({ lvol_name: lazyAlias, parent_name: goldenAlias })).catch((e: unknown) => {
            if (e instanceof SpdkError && /File exists/i.test(e.message)) return;
            throw toBackendError(e, `image ${name}: repointing the lazy golden onto the golden`);
          });
        }
      } else if (info?.esnap_clone === true) {
        // v24.01 (no set_parent): the disks made while it hydrated keep the lazy golden; it is
        // inflated in place (a second copy; new disks clone the golden meanwhile, so nothing
        // waits on its lock). Readers of it keep their channel to the source until they stop.
        log.info({ event: 'image.hydrate.lazy_in_place', disks: clones.length }, 'inflating the lazy golden its disks still read');
        await this.runs.inflate(lazyAlias, controller, `image ${name}`);
      }
    }
    if (after.some((l) => l.name === lazyHydrateName(name))) await ctx.deleteLvol(lvolAlias(ctx.lvs, lazyHydrateName(name)));
    if (source.kind === 'file') {
      await this.files.drop(name, log);
      return;
    }
    await this.sources.detach(controller, log);
    await this.records.drop('image', name);
  }

  /** Lazy objects of an image that deleteImage removes (after its disks are gone). */
  async deleteLazy(name: string): Promise<void> {
    const { ctx } = this;
    if (this.runs.images.has(name) && this.runs.images.get(name)?.state !== 'failed') throw new BackendError(`image ${name}: hydration is running`, 'busy');
    const lazyAlias = lvolAlias(ctx.lvs, lazyGoldenName(name));
    const lazy = await ctx.getBdev(lazyAlias);
    const clones = (lazy ? (lvolInfoOf(lazy)?.clones ?? []) : []).filter((c) => classifyLvol(c).role === 'disk');
    if (clones.length > 0) throw new BackendError(`image ${name}: ${clones.length} disk(s) are clones of its lazy golden (${clones.join(', ')})`, 'busy');
    for (const n of [lazyHydrateName(name), lazyBaseName(name), lazyGoldenName(name)]) await ctx.deleteLvol(lvolAlias(ctx.lvs, n));
    await this.sources.detach(peerControllerName(name), ctx.log.child({ image: name }));
    this.runs.images.delete(name);
    await this.records.drop('image', name);
    // The file source itself goes with the image's other import leftovers (ImageStore.dropSource).
    await this.records.drop('local', name);
  }
}
