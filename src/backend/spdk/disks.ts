import { SpdkError } from '../../spdk/errors.js';
import type { Bdev, Lvol } from '../../spdk/schemas.js';
import { BackendError, type DiskSpec, type ObservedDisk } from '../types.js';
import type { SpdkContext } from './context.js';
import { toBackendError } from './errors.js';
import type { FanoutLanes } from './fanout.js';
import type { ImageStore } from './images.js';
import type { LvstoreKeeper } from './lvstore.js';
import { checkDiskId, goldenName, imageOfSnapshot, imageOfSourceBdev, isInstanceBdev, lazyGoldenName, lvolAlias } from './naming.js';
import { ceilMiB, lvolBytes, planCloneSize } from './observe.js';
import { bdevSizeBytes, lvolInfoOf } from './schemas.js';

/**
 * VM disks: thin clones of a cached image (through its clone lanes), blank thin lvols, or an
 * existing bdev served as it is (never one this driver manages). Calls on one disk id run one
 * at a time; a clone or delete of a clone runs under its snapshot's lock.
 */
export class DiskStore {
  constructor(
    private readonly ctx: SpdkContext,
    private readonly keeper: LvstoreKeeper,
    private readonly lanes: FanoutLanes,
    private readonly images: ImageStore,
  ) {}

  ensureDisk(spec: DiskSpec): Promise<ObservedDisk> {
    const { ctx } = this;
    checkDiskId(spec.id);
    return ctx.diskLocks.run(spec.id, async () => {
      await this.keeper.ready();
      const src = spec.source;
      if (src.kind === 'bdev') {
        const bdev = await ctx.getBdev(src.bdev);
        if (!bdev) throw new BackendError(`disk ${spec.id}: bdev ${src.bdev} does not exist`, 'notFound');
        const ours = this.ownBdevRole(bdev);
        if (ours) {
          // A tenant naming our golden would get a read-write controller on every VM's base.
          throw new BackendError(`disk ${spec.id}: bdev: ${src.bdev} is ${ours}, which this node's agent manages; name a bdev that is not ours`, 'invalid');
        }
        return { id: spec.id, ref: bdev.name, sizeBytes: bdevSizeBytes(bdev), dependents: 0, owned: false };
      }
      const lvols = await ctx.listLvols();
      if (lvols.some((l) => l.name === spec.id)) return this.completeExistingDisk(spec);
      return src.kind === 'image' ? this.cloneDisk(spec, src.image, lvols) : this.createBlankDisk(spec);
    });
  }

  deleteDisk(id: string): Promise<void> {
    const { ctx } = this;
    checkDiskId(id);
    return ctx.diskLocks.run(id, async () => {
      await this.keeper.ready();
      const alias = lvolAlias(ctx.lvs, id);
      // Deleting a clone changes its snapshot's metadata: queue it with the snapshot's clones.
      const bdev = await ctx.getBdev(alias);
      const parent = bdev ? lvolInfoOf(bdev)?.base_snapshot : undefined;
      if (parent !== undefined) await ctx.snapshotLocks.run(lvolAlias(ctx.lvs, parent), () => ctx.deleteLvol(alias));
      else await ctx.deleteLvol(alias);
      ctx.log.info({ event: 'disk.deleted', disk: id }, 'disk deleted');
    });
  }

  /** What a bdev is when this backend made it (lvol of our lvstore, its base, an import source). */
  private ownBdevRole(bdev: Bdev): string | undefined {
    const { lvs, lvstore } = this.ctx;
    const names = [bdev.name, ...bdev.aliases];
    const info = lvolInfoOf(bdev);
    if ((info?.lvol_store_uuid !== undefined && info.lvol_store_uuid === lvstore.uuid) || names.some((n) => n.startsWith(`${lvs}/`))) {
      return `an lvol of lvstore ${lvs} (a cached image or a VM disk)`;
    }
    if (lvstore.baseName !== undefined && names.includes(lvstore.baseName)) return `the base bdev of lvstore ${lvs}`;
    if (names.some((n) => imageOfSourceBdev(n) !== undefined)) return 'the source bdev of an image import';
    if (names.some(isInstanceBdev)) return 'the marker that names the spdk_tgt process';
    return undefined;
  }

  private async cloneDisk(spec: DiskSpec, image: string, lvols: readonly Lvol[]): Promise<ObservedDisk> {
    const { ctx } = this;
    const log = ctx.log.child({ disk: spec.id, image });
    const alias = lvolAlias(ctx.lvs, spec.id);
    let goldenAlias = lvolAlias(ctx.lvs, goldenName(image));
    let golden = await ctx.getBdev(goldenAlias);
    // A lazy image still hydrating: its disks are clones of the lazy golden (one lane).
    const lazy = golden ? undefined : await ctx.getBdev(lvolAlias(ctx.lvs, lazyGoldenName(image)));
    if (lazy) {
      goldenAlias = lvolAlias(ctx.lvs, lazyGoldenName(image));
      golden = lazy;
    }
    if (!golden) throw new BackendError(`disk ${spec.id}: image ${image} is not cached on this node`, 'notFound');
    const goldenBytes = bdevSizeBytes(golden);
    const clusterBytes = ctx.lvstore.clusterBytes;
    const plan = planCloneSize(spec.capacityBytes, goldenBytes, this.images.exactSize(image) ?? goldenBytes - clusterBytes + 1);
    if (!plan.ok) throw new BackendError(`disk ${spec.id}: ${plan.reason}`, 'invalid');
    let from = goldenAlias;
    try {
      if (lazy) await ctx.snapshotLocks.run(goldenAlias, () => ctx.api.bdevLvolClone({ snapshot_name: goldenAlias, clone_name: spec.id }));
      else {
        await this.lanes.of(image, lvols).submit((snapshot) => {
          from = snapshot;
          return ctx.snapshotLocks.run(snapshot, () => ctx.api.bdevLvolClone({ snapshot_name: snapshot, clone_name: spec.id }));
        });
      }
    } catch (e) {
      if (e instanceof SpdkError && e.kind === 'exists') return this.completeExistingDisk(spec);
      if (e instanceof SpdkError && e.kind === 'notFound' && from !== goldenAlias) {
        // A fan-out that went away (deleted behind our back): find the lanes again, retry.
        this.lanes.forget(image);
        throw new BackendError(`disk ${spec.id}: clone lane ${from} is gone; retrying from the listing`, 'busy', { cause: e });
      }
      throw toBackendError(e, `disk ${spec.id}: cloning ${from}`);
    }
    if (plan.resize) {
      try {
        await ctx.api.bdevLvolResize({ name: alias, size_in_mib: plan.sizeMiB });
      } catch (e) {
        // Leave nothing half-made: a clone of the wrong size would look finished.
        await ctx.deleteLvolQuietly(alias, log);
        throw toBackendError(e, `disk ${spec.id}: resizing to ${plan.sizeMiB} MiB`);
      }
    }
    log.info({ event: 'disk.created', source: 'image', sizeMiB: plan.sizeMiB }, 'disk cloned');
    return { id: spec.id, ref: alias, sizeBytes: lvolBytes(plan.sizeMiB, ctx.lvstore.clusterBytes), image, dependents: 0, owned: true };
  }

  private async createBlankDisk(spec: DiskSpec): Promise<ObservedDisk> {
    const { ctx } = this;
    const capacity = spec.capacityBytes;
    if (capacity === undefined || !Number.isFinite(capacity) || capacity <= 0) {
      throw new BackendError(`disk ${spec.id}: a blank disk needs a positive capacityBytes`, 'invalid');
    }
    const sizeMiB = ceilMiB(capacity);
    try {
      await ctx.api.bdevLvolCreate({ lvol_name: spec.id, size_in_mib: sizeMiB, lvs_name: ctx.lvs, thin_provision: true });
    } catch (e) {
      if (e instanceof SpdkError && e.kind === 'exists') return this.completeExistingDisk(spec);
      throw toBackendError(e, `disk ${spec.id}: creating a ${sizeMiB} MiB lvol`);
    }
    ctx.log.info({ event: 'disk.created', disk: spec.id, source: 'blank', sizeMiB }, 'disk created');
    return { id: spec.id, ref: lvolAlias(ctx.lvs, spec.id), sizeBytes: lvolBytes(sizeMiB, ctx.lvstore.clusterBytes), dependents: 0, owned: true };
  }

  /** The disk exists: report it, growing it first if a crash came between clone and resize. */
  private async completeExistingDisk(spec: DiskSpec): Promise<ObservedDisk> {
    const { ctx } = this;
    const alias = lvolAlias(ctx.lvs, spec.id);
    let bdev = await ctx.getBdev(alias);
    if (!bdev) throw new BackendError(`disk ${spec.id}: listed but has no bdev`, 'internal');
    if (spec.capacityBytes !== undefined && bdevSizeBytes(bdev) < spec.capacityBytes) {
      await ctx.api.bdevLvolResize({ name: alias, size_in_mib: ceilMiB(spec.capacityBytes) }).catch((e: unknown) => {
        throw toBackendError(e, `disk ${spec.id}: growing to ${ceilMiB(spec.capacityBytes ?? 0)} MiB`);
      });
      bdev = (await ctx.api.bdevGetBdevs({ name: alias }))[0] ?? bdev;
    }
    const info = lvolInfoOf(bdev);
    const image = info?.base_snapshot !== undefined ? imageOfSnapshot(info.base_snapshot) : undefined;
    return {
      id: spec.id,
      ref: alias,
      sizeBytes: bdevSizeBytes(bdev),
      ...(image !== undefined ? { image } : {}),
      dependents: info?.clones?.length ?? 0,
      owned: true,
    };
  }
}
