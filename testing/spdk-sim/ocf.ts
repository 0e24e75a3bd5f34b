import { RpcError, JSONRPC_INTERNAL_ERROR, invalidParams } from './errors.js';
import type * as P from './params.js';
import { OCF_CACHE_SIZE_MIN, OCF_MODES, type Json } from './registry.js';
import type { OcfVbdev } from './state.js';
import { VhostModel } from './vhost-ctrl.js';

/** OCF cache vbdevs (v24.01 only: the v25.09 recording's build has no OCF). */
export class OcfModel extends VhostModel {
  // ---------------------------------------------------------------- OCF

  protected ocfFail(status: number): RpcError {
    return new RpcError(JSONRPC_INTERNAL_ERROR, `Could not create OCF vbdev: ${status}`);
  }

  /**
   * vbdev_ocf_construct: the vbdev is listed from the start; each base is attached (opened for
   * writing and claimed) when present, then the cache is started. A failure leaves the vbdev
   * listed with `started: false` until bdev_ocf_delete. In the recording the core ("golden")
   * is held by an external-snapshot clone's claim, so attaching it fails with -EPERM.
   */
  ocfCreate(p: P.OcfCreate): Json {
    if (this.ocf.has(p.name) || this.resolveBdev(p.name)) throw this.ocfFail(-1);
    if (!OCF_MODES.has(p.mode)) throw this.ocfFail(-22);
    const v: OcfVbdev = { name: p.name, mode: p.mode, cacheBdev: p.cache_bdev_name, coreBdev: p.core_bdev_name, cacheAttached: false, coreAttached: false, started: false };
    this.ocf.set(p.name, v);
    const cache = this.resolveBdev(p.cache_bdev_name);
    if (cache) {
      if (this.claimOf(cache)) throw this.ocfFail(-1);
      v.cacheAttached = true;
    }
    const core = this.resolveBdev(p.core_bdev_name);
    if (core) {
      if (this.claimOf(core)) throw this.ocfFail(-1);
      v.coreAttached = true;
    }
    if (!cache || !core) return p.name; // waits for the missing base bdev
    const cacheSize = this.bdevSize(cache);
    // Modeled as a failed start: OCF refuses caches below its minimum size.
    if (cacheSize.blockSize * cacheSize.numBlocks < OCF_CACHE_SIZE_MIN) throw this.ocfFail(-1);
    const coreSize = this.bdevSize(core);
    v.started = true;
    this.register({ kind: 'ocf', name: p.name, uuid: this.env.randomUuid(), ...coreSize });
    return p.name;
  }

  ocfGet(p: P.OptionalName | undefined): Json {
    let list = [...this.ocf.values()];
    if (p?.name !== undefined) {
      const v = this.ocf.get(p.name);
      if (!v) throw invalidParams('ENODEV');
      list = [v];
    }
    return list.map((v) => ({
      name: v.name,
      started: v.started,
      cache: { name: v.cacheBdev, attached: v.cacheAttached },
      core: { name: v.coreBdev, attached: v.coreAttached },
    }));
  }

  ocfDelete(p: P.NameOnly): Json {
    const v = this.ocf.get(p.name);
    if (!v) throw invalidParams('ENODEV');
    this.ocf.delete(p.name);
    if (v.started) this.unregister(v.name);
    return true;
  }
}
