import { rawErrno } from './errors.js';
import { BdevRegistry, RATE_LIMITS, type Json } from './registry.js';
import type { Bdev } from './state.js';

/** How bdev_get_bdevs renders every kind of bdev (malloc, aio, lvol, NVMe, OCF), per release. */
export class BdevRender extends BdevRegistry {
  // ---------------------------------------------------------------- bdev listing

  bdevJson(b: Bdev): Json {
    const { blockSize, numBlocks } = this.bdevSize(b);
    const claim = this.claimOf(b);
    const v2 = this.profile.newBdevFields;
    const out: { [key: string]: Json } = {
      name: b.name,
      aliases: this.aliasesOf(b),
      product_name: PRODUCT[b.kind],
      block_size: blockSize,
      num_blocks: numBlocks,
    };
    if (v2) {
      // NVMe namespaces report their write/unmap granularity; other bdevs report none.
      const nvme = b.kind === 'nvme';
      out.preferred_write_alignment = nvme ? 1 : 0;
      out.preferred_write_granularity = nvme ? 1 : 0;
      // The target's 128 KiB max I/O size in blocks.
      out.optimal_write_size = nvme ? 131072 / blockSize : 0;
      out.preferred_unmap_alignment = nvme ? 1 : 0;
      out.preferred_unmap_granularity = nvme ? 1 : 0;
    }
    out.uuid = this.bdevUuid(b);
    if (v2 && b.kind === 'nvme') out.numa_id = -1;
    out.assigned_rate_limits = { ...RATE_LIMITS };
    out.claimed = claim !== undefined;
    if (claim) out.claim_type = claim;
    out.zoned = false;
    out.supported_io_types = this.ioTypes(b);
    const domains = this.memoryDomains(b);
    if (domains.length > 0) out.memory_domains = domains;
    out.driver_specific = this.driverSpecific(b);
    return out;
  }

  protected driverSpecific(b: Bdev): Json {
    switch (b.kind) {
      case 'malloc':
        return {};
      case 'aio':
        // v24.01 has no `fallocate` (real v24.01 answer).
        return { aio: { filename: b.filename, block_size_override: b.blockSizeOverride, readonly: b.readonly, ...(this.profile.newBdevFields ? { fallocate: b.fallocate } : {}) } };
      case 'nvme': {
        const c = this.nvmeControllers.get(b.controller);
        const trid = c ? { ...c.trid } : {};
        return {
          nvme: [
            {
              trid,
              ctrlr_data: { cntlid: c?.cntlid ?? 1, vendor_id: '0x8086', model_number: c?.modelNumber ?? 'SPDK bdev Controller', serial_number: c?.serialNumber ?? '00000000000000000000', firmware_revision: this.profile.version, subnqn: c?.trid.subnqn ?? '', oacs: { security: 0, format: 0, firmware: 0, ns_manage: 0 }, multi_ctrlr: true, ana_reporting: false },
              vs: { nvme_version: this.profile.nvmeVersion },
              ns_data: { id: b.nsid, can_share: true },
            },
          ],
          mp_policy: 'active_passive',
        };
      }
      case 'ocf': {
        const v = this.ocf.get(b.name);
        return { cache_device: v?.cacheBdev ?? '', core_device: v?.coreBdev ?? '', mode: v?.mode ?? '', cache_line_size: 4, metadata_volatile: false };
      }
      case 'lvol': {
        const found = this.lvsOfLvolBdev(b);
        if (!found) return {};
        const { lvs, lvol } = found;
        const info: { [key: string]: Json } = {
          lvol_store_uuid: lvs.uuid,
          base_bdev: lvs.baseBdev,
          thin_provision: lvol.thin,
          ...(this.profile.lvolAllocatedInList ? { num_allocated_clusters: lvol.allocated } : {}),
          snapshot: this.isSnapshot(lvs, lvol),
          clone: lvol.parent?.kind === 'snapshot',
        };
        if (lvol.parent?.kind === 'snapshot') {
          const parentUuid = lvol.parent.uuid;
          const base = lvs.lvols.find((l) => l.uuid === parentUuid);
          if (base) info.base_snapshot = base.name;
        }
        if (this.isSnapshot(lvs, lvol)) info.clones = this.clonesOf(lvs, lvol.uuid).map((l) => l.name);
        info.esnap_clone = lvol.parent?.kind === 'esnap';
        if (lvol.parent?.kind === 'esnap') info.external_snapshot_name = lvol.parent.bdevUuid;
        return { lvol: info };
      }
    }
  }

  /** bdev_get_bdevs without the wait: -19 when a named bdev does not exist. */
  getBdevs(name: string | undefined): Json {
    if (name === undefined || name === '') return [...this.bdevs.values()].map((b) => this.bdevJson(b));
    const b = this.resolveBdev(name);
    if (!b) throw rawErrno('ENODEV');
    return [this.bdevJson(b)];
  }

  protected memoryDomains(b: Bdev): Json[] {
    const lvolBase = b.kind === 'lvol' ? this.lvsOfLvolBdev(b)?.lvs.baseBdev : undefined;
    const onMalloc = b.kind === 'malloc' || (lvolBase !== undefined && this.bdevs.get(lvolBase)?.kind === 'malloc');
    const system = { dma_device_id: 'system', dma_device_type: 1 };
    const accel = { dma_device_id: 'SPDK_ACCEL_DMA_DEVICE', dma_device_type: 2 };
    if (!this.profile.newBdevFields) return onMalloc ? [accel] : [];
    if (onMalloc) return [system, accel];
    if (b.kind === 'nvme') return [system];
    // An lvol reading through an external snapshot has that bdev's domains too (recorded: an
    // esnap clone of an NVMe-oF bdev lists `system`).
    if (b.kind === 'lvol') {
      const found = this.lvsOfLvolBdev(b);
      const esnap = found ? this.esnapUuidOf(found.lvs, found.lvol) : undefined;
      const src = esnap ? this.esnapSource(esnap) : undefined;
      if (src && src.kind !== 'lvol') return this.memoryDomains(src);
    }
    return [];
  }

  /** Whether a bdev takes unmap (what an NVMe-oF initiator learns about its namespace). */
  supportsUnmap(b: Bdev): boolean {
    switch (b.kind) {
      case 'malloc':
      case 'ocf':
        return true;
      case 'aio':
        return b.fallocate;
      case 'lvol':
        return !this.lvolReadOnly(b);
      case 'nvme':
        return b.unmap;
    }
  }

  /** Whether the lvol behind an lvol bdev is read-only (snapshots and set_read_only). */
  protected lvolReadOnly(b: Bdev): boolean {
    return b.kind === 'lvol' ? (this.lvsOfLvolBdev(b)?.lvol.readOnly ?? false) : false;
  }

  /**
   * supported_io_types as each release lists them. v24.01 has eleven keys; v25.09 lists more in
   * another order, and the bdev layer emulates write_zeroes wherever write works. Lvols answer
   * write, unmap and write_zeroes only when writable (a snapshot is read-only), never flush.
   */
  protected ioTypes(b: Bdev): Json {
    const ro = this.lvolReadOnly(b);
    const t = {
      read: true,
      write: true,
      unmap: false,
      write_zeroes: false,
      flush: true,
      reset: true,
      compare: false,
      compare_and_write: false,
      abort: false,
      nvme_admin: false,
      nvme_io: false,
      zcopy: false,
      seek: false,
      copy: false,
    };
    switch (b.kind) {
      case 'malloc':
        Object.assign(t, { unmap: true, write_zeroes: true, abort: true, zcopy: true, copy: true });
        break;
      case 'aio':
        // Real v24.01 and v25.09 alike: write even when read-only, write_zeroes emulated.
        Object.assign(t, { write_zeroes: true, unmap: b.fallocate });
        break;
      case 'lvol':
        Object.assign(t, { write: !ro, unmap: !ro, write_zeroes: !ro, flush: false, seek: true });
        break;
      case 'nvme':
        Object.assign(t, { write_zeroes: true, unmap: b.unmap, compare: true, compare_and_write: true, abort: true, nvme_admin: true, nvme_io: true, copy: true });
        break;
      case 'ocf':
        Object.assign(t, { unmap: true, write_zeroes: true });
        break;
    }
    if (!this.profile.newBdevFields) {
      const { read, write, unmap, write_zeroes, flush, reset, compare, compare_and_write, abort, nvme_admin, nvme_io } = t;
      return { read, write, unmap, write_zeroes, flush, reset, compare, compare_and_write, abort, nvme_admin, nvme_io };
    }
    return {
      read: t.read,
      write: t.write,
      unmap: t.unmap,
      flush: t.flush,
      reset: t.reset,
      nvme_admin: t.nvme_admin,
      nvme_io: t.nvme_io,
      nvme_io_md: false,
      write_zeroes: t.write_zeroes,
      zcopy: t.zcopy,
      get_zone_info: false,
      zone_management: false,
      zone_append: false,
      compare: t.compare,
      compare_and_write: t.compare_and_write,
      abort: t.abort,
      seek_hole: t.seek,
      seek_data: t.seek,
      copy: t.copy,
      nvme_iov_md: false,
      nvme_nssr: false,
    };
  }
}

const PRODUCT: Record<Bdev['kind'], string> = {
  malloc: 'Malloc disk',
  aio: 'AIO disk',
  nvme: 'NVMe disk',
  ocf: 'SPDK OCF',
  lvol: 'Logical Volume',
};

