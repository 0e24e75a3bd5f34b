import { RpcError, rawErrno, invalidParams } from './errors.js';
import { BdevModel } from './bdev.js';
import type * as P from './params.js';
import { BS_PAGE_SIZE, DEFAULT_CLUSTER_SIZE, NAME_MAX, metadataClusters, type Json } from './registry.js';
import type { Lvstore } from './state.js';

/**
 * Lvstores (blobstores on a base bdev): create, delete, rename, list; and the blobstore's
 * metadata operations in flight (locks, completion on a later poll, blob ids).
 */
export class LvstoreModel extends BdevModel {
  protected verifyName(name: string): void {
    if (name.length === 0 || name.length >= NAME_MAX) throw rawErrno('EINVAL');
  }

  lvsCreate(p: P.LvsCreate): Json {
    const base = this.resolveBdev(p.bdev_name);
    if (!base) throw rawErrno('ENODEV');
    if (this.claimOf(base)) throw rawErrno('EPERM');
    this.verifyName(p.lvs_name);
    if (this.lvsByName(p.lvs_name)) throw rawErrno('EEXIST');
    if (p.clear_method !== undefined && !['none', 'unmap', 'write_zeroes'].includes(p.clear_method.toLowerCase())) {
      throw new RpcError(-22, 'Invalid clear_method parameter');
    }
    const { blockSize, numBlocks } = this.bdevSize(base);
    const clusterSize = p.cluster_sz && p.cluster_sz > 0 ? p.cluster_sz : DEFAULT_CLUSTER_SIZE;
    if (clusterSize < BS_PAGE_SIZE || clusterSize % BS_PAGE_SIZE !== 0 || clusterSize % blockSize !== 0) throw invalidParams('EINVAL');
    const clusters = Math.floor((blockSize * numBlocks) / clusterSize);
    const total = clusters - metadataClusters(clusters, clusterSize);
    if (total <= 0) throw invalidParams('ENOSPC');
    const lvs: Lvstore = {
      uuid: this.env.randomUuid(),
      name: p.lvs_name,
      clusterSize,
      totalClusters: total,
      blockSize,
      lvols: [],
      baseBdev: base.name,
      ...(base.kind === 'aio' ? { persistKey: base.filename } : {}),
    };
    this.lvstores.set(lvs.uuid, lvs);
    this.persist(lvs);
    return lvs.uuid;
  }

  lvsDelete(p: P.LvsSelect): Json {
    const lvs = this.lvsByUuidXorName(p.uuid, p.lvs_name);
    this.lvstores.delete(lvs.uuid);
    for (const l of lvs.lvols) this.unregister(l.uuid);
    if (lvs.persistKey !== undefined) this.env.removeLvstore(lvs.persistKey);
    this.syncLvolBdevs();
    return true;
  }

  lvsRename(p: P.RenameLvs): Json {
    const lvs = this.lvsByName(p.old_name);
    if (!lvs) throw new RpcError(-2, `Lvol store ${p.old_name} not found`);
    if (p.new_name === p.old_name) return true;
    if (p.new_name.length === 0 || p.new_name.length >= NAME_MAX) throw invalidParams('EINVAL');
    if (this.lvsByName(p.new_name)) throw invalidParams('EEXIST');
    lvs.name = p.new_name;
    this.persist(lvs);
    return true;
  }

  protected lvsJson(lvs: Lvstore): Json {
    return {
      uuid: lvs.uuid,
      name: lvs.name,
      base_bdev: lvs.baseBdev,
      total_data_clusters: lvs.totalClusters,
      free_clusters: this.freeClusters(lvs),
      block_size: lvs.blockSize,
      cluster_size: lvs.clusterSize,
    };
  }

  getLvstores(p: P.LvsSelect | undefined): Json {
    if (p === undefined) return [...this.lvstores.values()].map((l) => this.lvsJson(l));
    return [this.lvsJson(this.lvsByUuidXorName(p.uuid, p.lvs_name))];
  }

  /**
   * SPDK's locked_operation_in_progress: a snapshot, clone, inflate, decouple, resize or delete
   * of a blob that another of those is still working on fails with EBUSY. The lock is released
   * when the operation completes, on a later poll (see `takeLocks`), so pipelined clones of
   * one snapshot get busy as on the real target.
   */
  protected lockBlob(uuid: string, style: (e: 'EBUSY') => RpcError): void {
    if (this.inFlight.has(uuid)) throw style('EBUSY');
    this.inFlight.add(uuid);
    this.newLocks.push(uuid);
  }

  protected newLocks: string[] = [];

  /**
   * Locks and new lvols of the operation just run: the server completes them on a later poll
   * (`completeOperation`), or at once when the operation failed.
   */
  takeLocks(): string[] {
    const l = this.newLocks;
    this.newLocks = [];
    return l;
  }

  /** The operation finished: its blobs are unlocked and the lvols it created get their bdev. */
  completeOperation(uuids: string[]): void {
    for (const u of uuids) {
      this.inFlight.delete(u);
      this.freeing.delete(u);
      this.resizing.delete(u);
      // A new lvol joins its lvstore's list when its creation completes (listing order).
      if (this.creating.delete(u)) {
        for (const lvs of this.lvstores.values()) {
          const i = lvs.lvols.findIndex((l) => l.uuid === u);
          if (i >= 0) lvs.lvols.push(...lvs.lvols.splice(i, 1));
        }
      }
    }
    this.syncLvolBdevs();
  }

  /**
   * How many polls the operation just run takes: a snapshot (it freezes I/O on its origin,
   * then syncs two blobs) completes after a clone sent with it (recorded answer order).
   */
  takePolls(): number {
    const n = this.opPolls;
    this.opPolls = 1;
    return n;
  }

  protected opPolls = 1;
  /** Lvols with a resize in flight. */
  protected readonly resizing = new Set<string>();
  /** Blob ids of lvols being deleted: taken until the delete completes (recorded listing order after a load). */
  protected readonly freeing = new Map<string, { lvs: Lvstore; id: number }>();
}
