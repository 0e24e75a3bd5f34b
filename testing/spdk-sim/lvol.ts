import { RpcError, rawErrno, invalidParams, internalError, JSONRPC_INVALID_PARAMS } from './errors.js';
import { LvstoreModel } from './lvstore.js';
import type * as P from './params.js';
import { MiB, NAME_MAX, Pending, type Json } from './registry.js';
import type { Lvol, Lvstore } from './state.js';

/** Lvols: snapshots, clones, external snapshots, hydration, and metadata operations in flight. */
export class LvolModel extends LvstoreModel {
  // ---------------------------------------------------------------- lvols

  /** lvs_verify_lvol_name: the errno, reported sync (raw) or via callback (-32602) by the caller. */
  protected lvolNameProblem(lvs: Lvstore, name: string | undefined): 'EINVAL' | 'EEXIST' | undefined {
    if (name === undefined || name.length === 0 || name.length >= NAME_MAX) return 'EINVAL';
    if (lvs.lvols.some((l) => l.name === name)) return 'EEXIST';
    return undefined;
  }

  /**
   * A new lvol's bdev is registered when its creation completes (a later poll): real v24.01
   * answers -19 to a resize of a clone pipelined right behind its bdev_lvol_clone.
   */
  protected addLvol(lvs: Lvstore, lvol: Lvol): string {
    this.creating.add(lvol.uuid);
    this.newLocks.push(lvol.uuid);
    const used = new Set([...lvs.lvols.map((l) => l.blobId), ...[...this.freeing.values()].filter((f) => f.lvs === lvs).map((f) => f.id)]);
    let id = 0;
    while (used.has(id)) id++;
    lvol.blobId = id;
    lvs.lvols.push(lvol);
    this.syncLvolBdevs();
    this.persist(lvs);
    return lvol.uuid;
  }

  lvolCreate(p: P.LvolCreate): Json {
    const lvs = this.lvsByUuidXorName(p.uuid, p.lvs_name);
    if (p.clear_method !== undefined && !['none', 'unmap', 'write_zeroes'].includes(p.clear_method.toLowerCase())) {
      throw new RpcError(-22, 'Invalid clean_method option');
    }
    const problem = this.lvolNameProblem(lvs, p.lvol_name);
    if (problem) throw rawErrno(problem);
    const clusters = this.clustersFor(lvs, p.size_in_mib * MiB);
    const thin = p.thin_provision ?? false;
    if (!thin && clusters > this.freeClusters(lvs)) throw invalidParams('ENOSPC');
    return this.addLvol(lvs, {
      uuid: this.env.randomUuid(),
      name: p.lvol_name,
      clusters,
      thin,
      allocated: thin ? 0 : clusters,
      parent: null,
      snapshot: false,
      readOnly: false,
    });
  }

  lvolSnapshot(p: P.LvolSnapshot): Json | Pending {
    const { lvs, lvol } = this.lvolByBdevName(p.lvol_name);
    const problem = this.lvolNameProblem(lvs, p.snapshot_name);
    if (problem) throw invalidParams(problem);
    if (lvol.readOnly) throw invalidParams('EINVAL');
    if (this.profile.version === '25.09' && this.esnapOverReconnectingNvme(lvol)) {
      // Probed on our v25.09 build: a snapshot of an esnap clone whose source is an NVMe
      // controller attached with ctrlr_loss_timeout_sec never answers (the I/O qpair's CONNECT
      // never completes), even seconds after the attach; without it, it succeeds.
      return new Pending(() => false, undefined, () => true);
    }
    this.lockBlob(lvol.uuid, invalidParams);
    // The snapshot takes over the origin's clusters and parent; the origin becomes a thin
    // clone of the snapshot.
    const snap: Lvol = {
      uuid: this.env.randomUuid(),
      name: p.snapshot_name,
      clusters: lvol.clusters,
      thin: lvol.thin,
      allocated: lvol.allocated,
      parent: lvol.parent,
      snapshot: true,
      readOnly: true,
    };
    this.opPolls = 2;
    lvol.parent = { kind: 'snapshot', uuid: snap.uuid };
    lvol.allocated = 0;
    lvol.thin = true;
    return this.addLvol(lvs, snap);
  }

  lvolClone(p: P.LvolClone): Json {
    const { lvs, lvol } = this.lvolByBdevName(p.snapshot_name);
    const problem = this.lvolNameProblem(lvs, p.clone_name);
    if (problem) throw invalidParams(problem);
    if (!lvol.readOnly) throw invalidParams('EINVAL');
    this.lockBlob(lvol.uuid, invalidParams);
    return this.addLvol(lvs, {
      uuid: this.env.randomUuid(),
      name: p.clone_name ?? '',
      clusters: lvol.clusters,
      thin: true,
      allocated: 0,
      parent: { kind: 'snapshot', uuid: lvol.uuid },
      snapshot: false,
      readOnly: false,
    });
  }

  lvolCloneBdev(p: P.LvolCloneBdev): Json {
    const lvs = this.lvsByName(p.lvs_name);
    if (!lvs) throw new RpcError(JSONRPC_INVALID_PARAMS, 'lvs does not exist');
    const ext = this.resolveBdev(p.bdev);
    if (!ext) throw new RpcError(JSONRPC_INVALID_PARAMS, 'bdev does not exist');
    const asLvol = this.lvsOfLvolBdev(ext);
    if (asLvol && asLvol.lvs === lvs) {
      throw new RpcError(JSONRPC_INVALID_PARAMS, 'bdev is an lvol in same lvs as clone; use bdev_lvol_clone instead');
    }
    const problem = this.lvolNameProblem(lvs, p.clone_name);
    if (problem) throw invalidParams(problem);
    // The external snapshot is opened read-only with a read_many_write_none claim, which
    // an exclusive writer's claim excludes.
    if (this.claimOf(ext) === 'exclusive_write') throw invalidParams('EPERM');
    const size = this.bdevSize(ext);
    // The external snapshot must fit the lvstore: blocks no larger than the lvstore's, a size
    // in whole clusters (the v25.09 recording: a 30 MiB bdev under 4 MiB clusters is refused).
    if (size.blockSize > lvs.blockSize || (size.blockSize * size.numBlocks) % lvs.clusterSize !== 0) throw invalidParams('EINVAL');
    return this.addLvol(lvs, {
      uuid: this.env.randomUuid(),
      name: p.clone_name,
      clusters: this.clustersFor(lvs, size.blockSize * size.numBlocks),
      thin: true,
      allocated: 0,
      parent: { kind: 'esnap', bdevUuid: this.bdevUuid(ext) },
      snapshot: false,
      readOnly: false,
    });
  }

  lvolResize(p: P.LvolResize): Json {
    const { lvs, lvol } = this.lvolByBdevName(p.name);
    if (lvol.readOnly) throw invalidParams('EPERM');
    this.lockBlob(lvol.uuid, invalidParams);
    this.resizing.add(lvol.uuid);
    const clusters = this.clustersFor(lvs, p.size_in_mib * MiB);
    if (!lvol.thin && clusters > lvol.allocated) {
      if (clusters - lvol.allocated > this.freeClusters(lvs)) throw invalidParams('ENOSPC');
      lvol.allocated = clusters;
    }
    lvol.clusters = clusters;
    lvol.allocated = Math.min(lvol.allocated, clusters);
    this.persist(lvs);
    return true;
  }

  /** Clusters allocated anywhere in the parent chain (an external snapshot backs all of them). */
  protected chainAllocated(lvs: Lvstore, lvol: Lvol): number {
    let max = 0;
    let parent = lvol.parent;
    while (parent) {
      if (parent.kind === 'esnap') return lvol.clusters;
      const parentUuid = parent.uuid;
      const p = lvs.lvols.find((l) => l.uuid === parentUuid);
      if (!p) break;
      max = Math.max(max, p.allocated);
      parent = p.parent;
    }
    return Math.min(max, lvol.clusters);
  }

  /**
   * Inflate copies every cluster the lvol does not own (zeros too: the recording's sparse
   * image ends fully allocated). A snapshot can be inflated: it stays a read-only snapshot with
   * its clones and loses its parent (real v24.01 and v25.09 answer true).
   */
  lvolInflate(p: P.NameOnly): Json | Pending {
    const { lvs, lvol } = this.lvolByBdevName(p.name);
    this.lockBlob(lvol.uuid, invalidParams);
    const need = lvol.clusters - lvol.allocated;
    if (need > this.freeClusters(lvs)) throw invalidParams('ENOSPC');
    this.checkEsnapBlocks(lvs, lvol);
    const source = this.sourceState(lvs, lvol);
    // Reads through a lost NVMe-oF source fail; one that is reconnecting stalls the copy until
    // it is back (v25.09 recording, section g).
    if (source === 'failed') throw invalidParams('EIO');
    if (this.inflating.size > 0 && need > 0) {
      // Real v24.01 and v25.09: every inflate copies through the RPC thread's one blobstore
      // channel; a cluster copy queued behind another inflate's is replayed as a 0-byte read
      // and never allocated. The inflate still answers true: the lvol is thick with clusters
      // that hold no data and have no backing device (seen on our builds: three inflates at
      // once left two of them with 0 of 16 clusters). Reading one crashes the target (see
      // completeOperation). Drivers run one inflate at a time.
      this.env.log('inflate overlapped another inflate: its clusters were never copied', { lvol: lvol.name, missing: need });
      this.noteLeakedChannels(lvs, lvol);
      lvol.thin = false;
      lvol.parent = null;
      this.persist(lvs);
      this.syncLvolBdevs();
      return true;
    }
    if (source === 'reconnecting') {
      this.inflating.set(lvol.uuid, 'pending');
      return new Pending(
        () => this.sourceState(lvs, lvol) !== 'reconnecting',
        undefined,
        () => {
          this.inflating.delete(lvol.uuid);
          if (this.sourceState(lvs, lvol) === 'failed') throw invalidParams('EIO');
          this.finishInflate(lvs, lvol);
          return true;
        },
      );
    }
    // The copy runs until the operation completes: one cluster per poll, as SPDK copies them.
    if (need > 0) {
      this.inflating.set(lvol.uuid, 'op');
      this.opPolls = need;
    }
    this.finishInflate(lvs, lvol);
    return true;
  }

  /** Inflates copying now: until their completion poll ('op'), or until their stalled source is back ('pending'). */
  protected readonly inflating = new Map<string, 'op' | 'pending'>();

  override completeOperation(uuids: string[]): void {
    const created = uuids.filter((u) => this.creating.has(u));
    for (const u of uuids) if (this.inflating.get(u) === 'op') this.inflating.delete(u);
    super.completeOperation(uuids);
    // A new bdev is examined (GPT reads its first blocks): a read that lands on a cluster an
    // overlapped inflate never copied dereferences the missing backing device (real v24.01:
    // SIGSEGV in bs_io_unit_to_back_dev_lba during the examine of a snapshot).
    for (const u of created) {
      for (const lvs of this.lvstores.values()) {
        const lvol = lvs.lvols.find((l) => l.uuid === u);
        if (lvol && this.firstClusterIsHole(lvs, lvol)) this.env.crash?.(`examine of ${lvol.name} read a cluster that an overlapped inflate never copied`);
      }
    }
  }

  /** Whether reading cluster 0 of `lvol` reaches a thick, parentless lvol that does not own it. */
  protected firstClusterIsHole(lvs: Lvstore, lvol: Lvol): boolean {
    let cur: Lvol | undefined = lvol;
    for (let depth = 0; cur && depth < 256; depth++) {
      if (cur.allocated > 0 || cur.clusters === 0) return false;
      const parent: Lvol['parent'] = cur.parent;
      if (!parent) return !cur.thin;
      if (parent.kind === 'esnap') return false;
      cur = lvs.lvols.find((l) => l.uuid === parent.uuid);
    }
    return false;
  }

  /**
   * Whether an lvol's external snapshot can be read: an NVMe-oF bdev whose namespace the
   * target dropped, or whose controller failed, cannot; one reconnecting will be.
   */
  protected sourceState(lvs: Lvstore, lvol: Lvol): 'ok' | 'failed' | 'reconnecting' {
    const esnap = this.esnapUuidOf(lvs, lvol);
    const src = esnap ? this.esnapSource(esnap) : undefined;
    if (!src || src.kind !== 'nvme') return 'ok';
    if (src.gone) return 'failed';
    const state = this.nvmeControllers.get(src.controller)?.state;
    if (state === 'failed') return 'failed';
    return state === 'reconnect_is_delayed' ? 'reconnecting' : 'ok';
  }

  private finishInflate(lvs: Lvstore, lvol: Lvol): void {
    this.noteLeakedChannels(lvs, lvol);
    lvol.allocated = lvol.clusters;
    lvol.thin = false;
    lvol.parent = null;
    this.persist(lvs);
    this.syncLvolBdevs();
  }

  lvolDecoupleParent(p: P.NameOnly): Json {
    const { lvs, lvol } = this.lvolByBdevName(p.name);
    const parent = lvol.parent;
    if (!parent) throw invalidParams('EINVAL');
    this.lockBlob(lvol.uuid, invalidParams);
    this.checkEsnapBlocks(lvs, lvol);
    if (this.sourceState(lvs, lvol) !== 'ok') throw invalidParams('EIO');
    const target = Math.max(lvol.allocated, this.chainAllocated(lvs, lvol));
    if (target - lvol.allocated > this.freeClusters(lvs)) throw invalidParams('ENOSPC');
    lvol.allocated = target;
    // Decoupling from an external snapshot copies every cluster, as inflate does: the lvol
    // ends thick (v25.09 recording, section c).
    if (parent.kind === 'esnap') {
      this.noteLeakedChannels(lvs, lvol);
      lvol.thin = false;
      lvol.parent = null;
    }
    else lvol.parent = lvs.lvols.find((l) => l.uuid === parent.uuid)?.parent ?? null;
    this.persist(lvs);
    this.syncLvolBdevs();
    return true;
  }

  lvolSetReadOnly(p: P.NameOnly): Json {
    const { lvs, lvol } = this.lvolByBdevName(p.name);
    lvol.readOnly = true;
    this.persist(lvs);
    return true;
  }

  lvolRename(p: P.RenameLvol): Json {
    const { lvs, lvol } = this.lvolByBdevName(p.old_name);
    if (p.new_name === lvol.name) return true;
    const problem = this.lvolNameProblem(lvs, p.new_name);
    if (problem) throw invalidParams(problem);
    lvol.name = p.new_name;
    this.persist(lvs);
    return true;
  }

  /** bdev_lvol_delete finds degraded lvols (no bdev) by UUID or lvs/name too. */
  protected lvolForDelete(name: string): { lvs: Lvstore; lvol: Lvol } {
    const b = this.resolveBdev(name);
    const viaBdev = b ? this.lvsOfLvolBdev(b) : undefined;
    if (viaBdev) return viaBdev;
    for (const lvs of this.lvstores.values()) {
      for (const lvol of lvs.lvols) {
        if (lvol.uuid === name || `${lvs.name}/${lvol.name}` === name) return { lvs, lvol };
      }
    }
    throw rawErrno('ENODEV');
  }

  lvolDelete(p: P.LvolDelete): Json | Pending {
    const { lvs, lvol } = this.lvolForDelete(p.name);
    if (this.resizing.has(lvol.uuid)) {
      // Real v24.01 and v25.09 both died on a delete sent while a resize of the same lvol was
      // in flight (probed with our builds): the delete never answers, the target is gone.
      this.env.crash?.(`bdev_lvol_delete of ${p.name} while its resize is in flight`);
      return new Pending(() => false, undefined, () => true);
    }
    const clones = this.clonesOf(lvs, lvol.uuid);
    // vbdev_lvol_destroy refuses a snapshot with more than one clone; with exactly one, the
    // blobstore merges the snapshot into its clone.
    if (clones.length > 1) throw internalError('EPERM');
    this.lockBlob(lvol.uuid, internalError);
    if (lvol.blobId !== undefined) this.freeing.set(lvol.uuid, { lvs, id: lvol.blobId });
    const only = clones[0];
    if (only) {
      only.allocated = Math.max(only.allocated, Math.min(only.clusters, lvol.allocated));
      only.parent = lvol.parent;
    }
    // Deleting an lvol that a vhost controller serves succeeds: SPDK takes no claim.
    lvs.lvols = lvs.lvols.filter((l) => l !== lvol);
    this.unregister(lvol.uuid);
    this.persist(lvs);
    return true;
  }

  getLvols(p: P.GetLvols | undefined): Json {
    const stores = p === undefined ? [...this.lvstores.values()] : [this.lvsByUuidXorName(p.lvs_uuid, p.lvs_name)];
    return stores.flatMap((lvs) =>
      lvs.lvols.filter((lvol) => !this.creating.has(lvol.uuid)).map((lvol) => ({
        alias: `${lvs.name}/${lvol.name}`,
        uuid: lvol.uuid,
        name: lvol.name,
        is_thin_provisioned: lvol.thin,
        is_snapshot: this.isSnapshot(lvs, lvol),
        is_clone: lvol.parent?.kind === 'snapshot',
        is_esnap_clone: lvol.parent?.kind === 'esnap',
        is_degraded: this.isDegraded(lvol),
        ...(this.profile.lvolAllocatedInList ? { num_allocated_clusters: lvol.allocated } : {}),
        lvs: { name: lvs.name, uuid: lvs.uuid },
      })),
    );
  }

  /** v24.01 reads an external snapshot with smaller blocks than the lvstore's as an I/O error. */
  private checkEsnapBlocks(lvs: Lvstore, lvol: Lvol): void {
    if (this.profile.inflateSmallerEsnapBlocks) return;
    const esnap = this.esnapUuidOf(lvs, lvol);
    const src = esnap ? this.esnapSource(esnap) : undefined;
    if (src && this.bdevSize(src).blockSize < lvs.blockSize) {
      // The failed copy keeps the cluster it had allocated until the next load (recorded:
      // free_clusters one lower until a restart).
      lvs.leakedClusters = (lvs.leakedClusters ?? 0) + 1;
      throw invalidParams('EIO');
    }
  }

  /**
   * Threads that read through an lvol keep their I/O channel to its external snapshot after
   * an inflate takes the lvol off it; those are the threads of controllers with a session
   * open on the lvol or on any clone below it (v25.09 recording: detach then answers -110).
   */
  private noteLeakedChannels(lvs: Lvstore, lvol: Lvol): void {
    const esnap = this.esnapUuidOf(lvs, lvol);
    const src = esnap ? this.esnapSource(esnap) : undefined;
    if (!src) return;
    const below = new Set([lvol.uuid]);
    for (let grew = true; grew; ) {
      grew = false;
      for (const l of lvs.lvols) {
        if (!below.has(l.uuid) && l.parent?.kind === 'snapshot' && below.has(l.parent.uuid)) {
          below.add(l.uuid);
          grew = true;
        }
      }
    }
    for (const c of this.controllers.values()) {
      if (c.bdev !== null && below.has(c.bdev) && (this.env.openSessions?.(c) ?? 0) > 0) {
        const set = this.leakedChannels.get(src.name) ?? new Set<string>();
        set.add(c.name);
        this.leakedChannels.set(src.name, set);
      }
    }
  }


  private esnapOverReconnectingNvme(lvol: Lvol): boolean {
    if (lvol.parent?.kind !== 'esnap') return false;
    const src = this.esnapSource(lvol.parent.bdevUuid);
    if (!src) return false;
    return [...this.nvmeControllers.values()].some((c) => c.lossTimeoutSec !== 0 && c.bdevs.includes(src.name));
  }

  /** The lvol an lvol RPC names, healthy or degraded (set_parent finds degraded ones, then refuses). */
  private anyLvol(name: string): { lvs: Lvstore; lvol: Lvol; degraded: boolean } | undefined {
    const b = this.resolveBdev(name);
    const viaBdev = b ? this.lvsOfLvolBdev(b) : undefined;
    if (viaBdev) return { ...viaBdev, degraded: false };
    for (const lvs of this.lvstores.values()) {
      for (const lvol of lvs.lvols) if (lvol.uuid === name || `${lvs.name}/${lvol.name}` === name) return { lvs, lvol, degraded: true };
    }
    return undefined;
  }

  /**
   * bdev_lvol_set_parent (v25.09 recording, section c): a thin lvol becomes a clone of a
   * snapshot of the same size in its lvstore, keeping the clusters it owns.
   */
  lvolSetParent(p: P.LvolSetParent): Json {
    const found = this.anyLvol(p.lvol_name);
    if (!found || found.degraded) throw rawErrno('ENODEV');
    const { lvs, lvol } = found;
    const parentBdev = this.resolveBdev(p.parent_name);
    const parent = parentBdev ? this.lvsOfLvolBdev(parentBdev) : undefined;
    if (!parent) throw rawErrno('ENODEV');
    if (parent.lvs !== lvs) throw invalidParams('EINVAL');
    if (lvol.parent?.kind === 'snapshot' && lvol.parent.uuid === parent.lvol.uuid) throw invalidParams('EEXIST');
    if (!this.isSnapshot(lvs, parent.lvol) || !lvol.thin || parent.lvol.clusters !== lvol.clusters) throw invalidParams('EINVAL');
    this.lockBlob(lvol.uuid, invalidParams);
    lvol.parent = { kind: 'snapshot', uuid: parent.lvol.uuid };
    this.syncLvolBdevs();
    this.persist(lvs);
    return true;
  }

  /**
   * bdev_lvol_set_parent_bdev: any thin lvol (plain, clone, esnap clone, snapshot with
   * clones) takes an external snapshot whose size is whole clusters; a degraded lvol cannot
   * be repointed (-19), as the recording shows.
   */
  lvolSetParentBdev(p: P.LvolSetParentBdev): Json {
    const found = this.anyLvol(p.lvol_name);
    if (!found || found.degraded) throw rawErrno('ENODEV');
    const { lvs, lvol } = found;
    const ext = this.resolveBdev(p.parent_name);
    if (!ext) throw invalidParams('ENODEV');
    const uuid = this.bdevUuid(ext);
    if (lvol.parent?.kind === 'esnap' && lvol.parent.bdevUuid === uuid) throw invalidParams('EEXIST');
    const size = this.bdevSize(ext);
    if (!lvol.thin || size.blockSize > lvs.blockSize || (size.blockSize * size.numBlocks) % lvs.clusterSize !== 0) throw invalidParams('EINVAL');
    this.lockBlob(lvol.uuid, invalidParams);
    lvol.parent = { kind: 'esnap', bdevUuid: uuid };
    this.syncLvolBdevs();
    this.persist(lvs);
    return true;
  }
}
