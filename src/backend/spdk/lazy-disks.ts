import { SpdkError } from '../../spdk/errors.js';
import type { RemoteDiskRef } from '../remote.js';
import { BackendError, type DiskHydration, type ObservedDisk } from '../types.js';
import type { SpdkContext } from './context.js';
import { toBackendError } from './errors.js';
import { canReparent, diskPercent, type Hydration, type Hydrations } from './hydration.js';
import type { LazyRecords } from './lazy-records.js';
import type { LvstoreKeeper } from './lvstore.js';
import { checkDiskId, classifyLvol, diskBaseName, diskHydrateName, diskSourceControllerName, lvolAlias } from './naming.js';
import type { RemoteSources } from './remote-sources.js';
import { bdevSizeBytes, lvolInfoOf } from './schemas.js';

/**
 * Lazy disks (migration): `<disk>` is an external-snapshot clone of another node's disk
 * (`lzd-<disk>n1`), recorded as `disk-<disk>.json`; hydrateDisk inflates a helper `<disk>.hyd`,
 * snapshots it as `<disk>.hsnap` and repoints the disk onto it (v24.09+), then detaches.
 */
export class LazyDisks {
  constructor(
    private readonly ctx: SpdkContext,
    private readonly keeper: LvstoreKeeper,
    private readonly records: LazyRecords,
    private readonly sources: RemoteSources,
    private readonly runs: Hydrations,
  ) {}

  async cloneRemoteDisk(ref: RemoteDiskRef, id: string): Promise<ObservedDisk> {
    const { ctx } = this;
    checkDiskId(id);
    if (ref.transport !== 'nvmf-tcp') throw new BackendError(`disk ${id}: spdk reads NVMe-oF/TCP exports only, not ${ref.transport}`, 'invalid');
    await this.keeper.ready();
    const alias = lvolAlias(ctx.lvs, id);
    const existing = (await ctx.listLvols()).find((l) => l.name === id);
    const rec = await this.records.read('disk', id);
    if (existing && !rec) {
      const b = await ctx.getBdev(alias);
      if (b) return { id, ref: alias, sizeBytes: bdevSizeBytes(b), dependents: 0, owned: true };
    }
    await this.records.write('disk', id, ref, { hydrate: rec?.hydrate ?? false });
    const src = await this.sources.attach(diskSourceControllerName(id), ref, `disk ${id}`);
    if (!existing) {
      await ctx.api.bdevLvolCloneBdev({ bdev: src.name, lvs_name: ctx.lvs, clone_name: id }).catch((e: unknown) => {
        if (e instanceof SpdkError && e.kind === 'exists') return;
        throw toBackendError(e, `disk ${id}: external-snapshot clone of ${src.name}`);
      });
      ctx.log.info({ event: 'disk.created', disk: id, source: 'remote', nqn: ref.subnqn }, 'lazy clone of a remote disk created');
    }
    const b = await ctx.getBdev(alias);
    if (!b) throw new BackendError(`disk ${id}: lazy clone has no bdev (its source is not attached)`, 'transport');
    return { id, ref: alias, sizeBytes: bdevSizeBytes(b), dependents: lvolInfoOf(b)?.clones?.length ?? 0, owned: true };
  }

  async hydrateDisk(id: string, imageState: (image: string) => Promise<DiskHydration | undefined>): Promise<DiskHydration> {
    const { ctx } = this;
    checkDiskId(id);
    await this.keeper.ready();
    const running = this.runs.disks.get(id);
    const lvols = await ctx.listLvols();
    const disk = lvols.find((l) => l.name === id);
    if (!disk) throw new BackendError(`disk ${id} does not exist`, 'notFound');
    const diskBdev = disk.is_degraded ? undefined : await ctx.getBdev(lvolAlias(ctx.lvs, id));
    const clusters = diskBdev ? Math.ceil(bdevSizeBytes(diskBdev) / ctx.lvstore.clusterBytes) : 0;
    const percent = (): number => diskPercent(lvols, id, clusters);
    if (running) await this.runs.refreshSourceStates();
    if (running) return { id, state: running.state === 'paused' ? 'paused' : 'hydrating', percent: percent(), ...(running.message !== undefined ? { message: running.message } : {}) };
    const rec = await this.records.read('disk', id);
    if (rec) {
      await this.records.write('disk', id, rec.ref, { hydrate: true });
      this.startHydration(id, rec.ref);
      return { id, state: 'hydrating', percent: percent() };
    }
    // A clone of a lazy golden reads through the image's source: report the image's hydration.
    const parent = diskBdev ? lvolInfoOf(diskBdev)?.base_snapshot : undefined;
    const role = parent !== undefined ? classifyLvol(parent) : undefined;
    if (role?.role === 'lazy') {
      const s = await imageState(role.image);
      if (s) return { ...s, id };
    }
    return { id, state: 'standalone', percent: 100 };
  }

  /** Starts the hydration of disk `id` from `ref` unless one runs (resume after a restart, too). */
  startHydration(id: string, ref: RemoteDiskRef): void {
    this.runs.start(this.runs.disks, id, `disk ${id}`, () => this.hydrateNow(id, ref));
  }

  private async hydrateNow(id: string, ref: RemoteDiskRef): Promise<void> {
    const { ctx } = this;
    const log = ctx.log.child({ disk: id });
    await this.keeper.ready();
    const controller = diskSourceControllerName(id);
    const alias = lvolAlias(ctx.lvs, id);
    const lvols = await ctx.listLvols();
    const has = (n: string): boolean => lvols.some((l) => l.name === n);
    if (!has(id)) {
      // Deleted meanwhile: nothing depends on the source any more.
      await this.sources.detach(controller, log);
      await this.records.drop('disk', id);
      return;
    }
    const bdev = await ctx.getBdev(alias);
    const readsRemote = !bdev || lvolInfoOf(bdev)?.esnap_clone === true;
    const started = Date.now();
    if (readsRemote) {
      const src = await this.sources.attach(controller, ref, `disk ${id}`);
      const hsnap = lvolAlias(ctx.lvs, diskBaseName(id));
      let repointed = false;
      if (canReparent(ctx)) {
        if (!has(diskBaseName(id))) {
          const hyd = lvolAlias(ctx.lvs, diskHydrateName(id));
          if (!has(diskHydrateName(id))) {
            await ctx.api.bdevLvolCloneBdev({ bdev: src.name, lvs_name: ctx.lvs, clone_name: diskHydrateName(id) }).catch((e: unknown) => {
              throw toBackendError(e, `disk ${id}: hydration clone of ${src.name}`);
            });
          }
          log.info({ event: 'disk.hydrate.start' }, 'hydrating the disk from its source');
          await this.runs.inflate(hyd, controller, `disk ${id}`);
          await ctx.api.bdevLvolSnapshot({ lvol_name: hyd, snapshot_name: diskBaseName(id) }).catch((e: unknown) => {
            throw toBackendError(e, `disk ${id}: snapshot of the hydrated copy`);
          });
        }
        await ctx.deleteLvol(lvolAlias(ctx.lvs, diskHydrateName(id)));
        repointed = await ctx.diskLocks
          .run(id, () => ctx.api.bdevLvolSetParent({ lvol_name: alias, parent_name: hsnap }))
          .then(() => true)
          .catch((e: unknown) => {
            // A disk grown beyond its source cannot take a parent of another size: inflate it instead.
            log.warn({ event: 'disk.hydrate.repoint_failed', err: String(e) }, 'cannot repoint the disk; inflating it in place');
            return false;
          });
        if (!repointed) await ctx.deleteLvolQuietly(hsnap, log);
      }
      if (!repointed) await this.runs.inflate(alias, controller, `disk ${id}`);
      log.info({ event: 'disk.hydrate.done', ms: Date.now() - started }, 'disk hydrated');
    }
    await this.sources.detach(controller, log);
    await this.records.drop('disk', id);
  }

  /** After deleteDisk: its hydration helpers and source go too. */
  async forgetDisk(id: string): Promise<void> {
    const { ctx } = this;
    const log = ctx.log.child({ disk: id });
    await ctx.deleteLvol(lvolAlias(ctx.lvs, diskHydrateName(id)));
    await ctx.deleteLvol(lvolAlias(ctx.lvs, diskBaseName(id)));
    if (await this.records.read('disk', id).catch(() => undefined)) {
      await this.sources.detach(diskSourceControllerName(id), log);
      await this.records.drop('disk', id);
    }
  }

  /** Disk hydration state for observe-like callers (tests). */
  diskState(id: string): Hydration['state'] | undefined {
    return this.runs.disks.get(id)?.state;
  }
}

