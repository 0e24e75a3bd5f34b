import path from 'node:path';
import { RpcError, rawErrno, invalidParams, internalError, JSONRPC_INVALID_PARAMS, JSONRPC_INTERNAL_ERROR } from './errors.js';
import { NvmfFabric, type NvmfTarget, type RemoteNamespace } from './fabric.js';
import type {
  AioBdev,
  Bdev,
  ClaimType,
  ListenAddress,
  Lvol,
  Lvstore,
  LvstoreMeta,
  MallocBdev,
  NvmeController,
  NvmfSubsystem,
  OcfVbdev,
  VhostController,
} from './state.js';
import type * as P from './params.js';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

const MiB = 1024 * 1024;
const DEFAULT_CLUSTER_SIZE = 4 * MiB;
const BS_PAGE_SIZE = 4096;
/** spdk_lvol.h: SPDK_LVOL_NAME_MAX / SPDK_LVS_NAME_MAX, including the terminating NUL. */
const NAME_MAX = 64;
/** OCF refuses cache devices smaller than this (OCF_CACHE_SIZE_MIN). */
const OCF_CACHE_SIZE_MIN = 20 * MiB;
/** sun_path is 108 bytes including the NUL. */
const SUN_PATH_MAX = 107;
const DISCOVERY_NQN = 'nqn.2014-08.org.nvmexpress.discovery';
const OCF_MODES = new Set(['wb', 'wt', 'pt', 'wa', 'wi', 'wo']);

/** Where the model meets the outside world; injected so that the model itself stays pure. */
export interface ModelEnv {
  randomUuid(): string;
  /** Size in bytes of a file; throws RpcError (-2) when it does not exist. */
  fileSize(filename: string): number;
  /** Blobstore metadata on persistent base bdevs (aio files), keyed by file path. */
  loadLvstore(filename: string): LvstoreMeta | undefined;
  saveLvstore(filename: string, meta: LvstoreMeta): void;
  removeLvstore(filename: string): void;
  /** The target's core mask (spdk_tgt -m). */
  coreMask: bigint;
  vhostDir: string;
  fabric: NvmfFabric;
  log(event: string, fields: Record<string, unknown>): void;
}

export interface SessionInfo {
  vid: number;
  id: number;
  name: string;
  started: boolean;
  max_queues: number;
  inflight_task_cnt: number;
}

/**
 * Blobstore metadata size: super block, the three used-bit masks and one metadata page per
 * cluster (the default num_md_pages_per_cluster_ratio of 100), rounded up to clusters. For
 * the recording's 32 MiB bdev with 1 MiB clusters this is 1 cluster, leaving 31.
 */
export function metadataClusters(numClusters: number, clusterSize: number): number {
  const bitsPerPage = BS_PAGE_SIZE * 8;
  const mdPages = numClusters;
  const pages = 1 + Math.ceil(numClusters / bitsPerPage) + 2 * Math.ceil(mdPages / bitsPerPage) + mdPages;
  return Math.ceil((pages * BS_PAGE_SIZE) / clusterSize);
}

/** spdk_cpuset_parse: hex with or without 0x, or a list like "[0,2-3]". */
export function parseCpumask(text: string): bigint | undefined {
  const s = text.trim();
  if (s.startsWith('[')) {
    if (!s.endsWith(']')) return undefined;
    let mask = 0n;
    for (const part of s.slice(1, -1).split(',')) {
      const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
      if (!m) return undefined;
      const lo = Number(m[1]);
      const hi = m[2] === undefined ? lo : Number(m[2]);
      if (hi < lo || hi > 1023) return undefined;
      for (let c = lo; c <= hi; c++) mask |= 1n << BigInt(c);
    }
    return mask;
  }
  const hex = s.replace(/^0x/i, '');
  if (!/^[0-9a-f]+$/i.test(hex) || hex.length > 256) return undefined;
  return BigInt(`0x${hex}`);
}

const formatMask = (mask: bigint): string => `0x${mask.toString(16)}`;

const RATE_LIMITS = { rw_ios_per_sec: 0, rw_mbytes_per_sec: 0, r_mbytes_per_sec: 0, w_mbytes_per_sec: 0 };

/**
 * In-memory model of spdk_tgt v24.01's bdev, lvol, vhost-blk, NVMe-oF and OCF state. Every
 * method mirrors one RPC: it either returns the RPC's result or throws an RpcError with the
 * code and message SPDK uses for that condition (see errors.ts for the two styles).
 */
export class SpdkModel implements NvmfTarget {
  /** Registration order is the order bdev_get_bdevs lists them in. */
  readonly bdevs = new Map<string, Bdev>();
  readonly lvstores = new Map<string, Lvstore>();
  readonly controllers = new Map<string, VhostController>();
  readonly ocf = new Map<string, OcfVbdev>();
  readonly transports = new Map<string, Record<string, Json>>();
  readonly subsystems = new Map<string, NvmfSubsystem>();
  readonly nvmeControllers = new Map<string, NvmeController>();
  private mallocCounter = 0;

  constructor(private readonly env: ModelEnv) {}

  // ---------------------------------------------------------------- lookups

  private lvsOfLvolBdev(b: Bdev): { lvs: Lvstore; lvol: Lvol } | undefined {
    if (b.kind !== 'lvol') return undefined;
    const lvs = this.lvstores.get(b.lvsUuid);
    const lvol = lvs?.lvols.find((l) => l.uuid === b.name);
    return lvs && lvol ? { lvs, lvol } : undefined;
  }

  bdevUuid(b: Bdev): string {
    return b.kind === 'lvol' ? b.name : b.uuid;
  }

  private bdevSize(b: Bdev): { blockSize: number; numBlocks: number } {
    if (b.kind !== 'lvol') return { blockSize: b.blockSize, numBlocks: b.numBlocks };
    const found = this.lvsOfLvolBdev(b);
    if (!found) return { blockSize: 512, numBlocks: 0 };
    const { lvs, lvol } = found;
    return { blockSize: lvs.blockSize, numBlocks: (lvol.clusters * lvs.clusterSize) / lvs.blockSize };
  }

  private aliasesOf(b: Bdev): string[] {
    if (b.kind === 'lvol') {
      const found = this.lvsOfLvolBdev(b);
      return found ? [`${found.lvs.name}/${found.lvol.name}`] : [];
    }
    return b.name === b.uuid ? [] : [b.uuid];
  }

  /** spdk_bdev_get_by_name: names and aliases (UUIDs, lvs/lvol). */
  resolveBdev(name: string): Bdev | undefined {
    const direct = this.bdevs.get(name);
    if (direct) return direct;
    for (const b of this.bdevs.values()) if (this.aliasesOf(b).includes(name)) return b;
    return undefined;
  }

  private bdevByUuid(uuid: string): Bdev | undefined {
    for (const b of this.bdevs.values()) if (this.bdevUuid(b) === uuid) return b;
    return undefined;
  }

  private lvsByName(name: string): Lvstore | undefined {
    for (const lvs of this.lvstores.values()) if (lvs.name === name) return lvs;
    return undefined;
  }

  /** vbdev_get_lvol_store_by_uuid_xor_name: raw errno codes. */
  private lvsByUuidXorName(uuid: string | undefined, name: string | undefined): Lvstore {
    if ((uuid === undefined) === (name === undefined)) throw rawErrno('EINVAL');
    const lvs = uuid !== undefined ? this.lvstores.get(uuid) : this.lvsByName(name ?? '');
    if (!lvs) throw rawErrno('ENODEV');
    return lvs;
  }

  /** The lvol behind a bdev name, as the lvol RPCs look it up (-19 otherwise). */
  private lvolByBdevName(name: string): { lvs: Lvstore; lvol: Lvol } {
    const b = this.resolveBdev(name);
    const found = b ? this.lvsOfLvolBdev(b) : undefined;
    if (!found) throw rawErrno('ENODEV');
    return found;
  }

  private clonesOf(lvs: Lvstore, uuid: string): Lvol[] {
    return lvs.lvols.filter((l) => l.parent?.kind === 'snapshot' && l.parent.uuid === uuid);
  }

  isDegraded(lvol: Lvol): boolean {
    return lvol.parent?.kind === 'esnap' && this.bdevByUuid(lvol.parent.bdevUuid) === undefined;
  }

  private isSnapshot(lvs: Lvstore, lvol: Lvol): boolean {
    return lvol.snapshot || this.clonesOf(lvs, lvol.uuid).length > 0;
  }

  /** Who holds a claim on a bdev (SPDK's bdev claims); undefined when unclaimed. */
  claimOf(b: Bdev): ClaimType | undefined {
    for (const lvs of this.lvstores.values()) if (lvs.baseBdev === b.name) return 'exclusive_write';
    for (const v of this.ocf.values()) {
      if ((v.cacheAttached && v.cacheBdev === b.name) || (v.coreAttached && v.coreBdev === b.name)) return 'exclusive_write';
    }
    for (const s of this.subsystems.values()) if (s.namespaces.some((ns) => ns.bdevName === b.name)) return 'exclusive_write';
    const uuid = this.bdevUuid(b);
    for (const lvs of this.lvstores.values()) {
      if (lvs.lvols.some((l) => l.parent?.kind === 'esnap' && l.parent.bdevUuid === uuid)) return 'read_many_write_none';
    }
    return undefined;
  }

  private freeClusters(lvs: Lvstore): number {
    return lvs.totalClusters - lvs.lvols.reduce((sum, l) => sum + l.allocated, 0);
  }

  private clustersFor(lvs: Lvstore, bytes: number): number {
    return Math.ceil(bytes / lvs.clusterSize);
  }

  // ---------------------------------------------------------------- registration

  private register(b: Bdev): void {
    this.bdevs.set(b.name, b);
    // A bdev coming (back) may complete degraded external-snapshot clones.
    if (b.kind !== 'lvol') this.syncLvolBdevs();
  }

  /** Hot-remove: what SPDK's bdev users do when a bdev under them goes away. */
  private unregister(name: string): void {
    const b = this.bdevs.get(name);
    if (!b) return;
    this.bdevs.delete(name);
    for (const c of this.controllers.values()) if (c.bdev === name) c.bdev = null;
    for (const s of this.subsystems.values()) s.namespaces = s.namespaces.filter((ns) => ns.bdevName !== name);
    for (const v of this.ocf.values()) {
      if (v.cacheBdev === name || v.coreBdev === name) {
        if (v.cacheBdev === name) v.cacheAttached = false;
        if (v.coreBdev === name) v.coreAttached = false;
        if (v.started) {
          v.started = false;
          this.unregister(v.name);
        }
      }
    }
    for (const lvs of [...this.lvstores.values()]) {
      if (lvs.baseBdev === name) {
        // The blobstore is unloaded, not destroyed: on an aio file it comes back on examine.
        this.lvstores.delete(lvs.uuid);
        for (const l of lvs.lvols) this.unregister(l.uuid);
        this.env.log('lvstore unloaded', { lvs: lvs.name, base_bdev: name });
      }
    }
    this.syncLvolBdevs();
  }

  /** Lvol bdevs exist for every lvol that is not degraded. */
  private syncLvolBdevs(): void {
    for (const lvs of this.lvstores.values()) {
      for (const lvol of lvs.lvols) {
        const registered = this.bdevs.has(lvol.uuid);
        const degraded = this.isDegraded(lvol);
        if (!registered && !degraded) this.bdevs.set(lvol.uuid, { kind: 'lvol', name: lvol.uuid, lvsUuid: lvs.uuid });
        if (registered && degraded) this.unregister(lvol.uuid);
      }
    }
  }

  private persist(lvs: Lvstore): void {
    if (lvs.persistKey === undefined) return;
    const { uuid, name, clusterSize, totalClusters, blockSize, lvols } = lvs;
    this.env.saveLvstore(lvs.persistKey, { uuid, name, clusterSize, totalClusters, blockSize, lvols });
  }

  /** SPDK's examine: a bdev carrying a blobstore brings its lvstore and lvols back. */
  private examine(b: AioBdev): void {
    const meta = this.env.loadLvstore(b.filename);
    if (!meta) return;
    if (this.lvstores.has(meta.uuid) || this.lvsByName(meta.name)) {
      this.env.log('lvstore not loaded: name or uuid in use', { lvs: meta.name, base_bdev: b.name });
      return;
    }
    const lvs: Lvstore = { ...structuredClone(meta), baseBdev: b.name, persistKey: b.filename };
    this.lvstores.set(lvs.uuid, lvs);
    this.syncLvolBdevs();
    this.env.log('lvstore loaded', { lvs: lvs.name, base_bdev: b.name, lvols: lvs.lvols.length });
  }

  // ---------------------------------------------------------------- misc

  version(): Json {
    return { version: 'SPDK v24.01', fields: { major: 24, minor: 1, patch: 0, suffix: '' } };
  }

  // ---------------------------------------------------------------- malloc / aio

  private checkNewBdevName(name: string): void {
    if (this.resolveBdev(name)) throw rawErrno('EEXIST');
  }

  mallocCreate(p: P.MallocCreate): Json {
    if (p.block_size % 512 !== 0) throw new RpcError(-22, `Block size ${p.block_size} is not a multiple of 512`);
    if (p.num_blocks === 0) throw new RpcError(-22, 'Disk num_blocks must be greater than 0');
    let name = p.name;
    if (name === undefined || name === '') {
      do name = `Malloc${this.mallocCounter++}`;
      while (this.resolveBdev(name));
    }
    this.checkNewBdevName(name);
    const uuid = p.uuid ?? this.env.randomUuid();
    if (p.uuid !== undefined && this.bdevByUuid(p.uuid)) throw rawErrno('EEXIST');
    const b: MallocBdev = { kind: 'malloc', name, uuid, blockSize: p.block_size, numBlocks: p.num_blocks };
    this.register(b);
    return name;
  }

  private deleteBaseBdev(name: string, kind: 'malloc' | 'aio'): Json {
    const b = this.bdevs.get(name);
    if (!b || b.kind !== kind) throw rawErrno('ENODEV');
    this.unregister(name);
    return true;
  }

  mallocDelete(p: P.NameOnly): Json {
    return this.deleteBaseBdev(p.name, 'malloc');
  }

  aioCreate(p: P.AioCreate): Json {
    const blockSize = p.block_size && p.block_size > 0 ? p.block_size : 512;
    if (blockSize < 512 || (blockSize & (blockSize - 1)) !== 0) throw rawErrno('EINVAL');
    this.checkNewBdevName(p.name);
    const size = this.env.fileSize(p.filename);
    const numBlocks = Math.floor(size / blockSize);
    if (numBlocks === 0) throw rawErrno('EINVAL');
    const b: AioBdev = {
      kind: 'aio',
      name: p.name,
      // v24.01 gives an aio bdev a new random UUID on every create.
      uuid: this.env.randomUuid(),
      blockSize,
      numBlocks,
      filename: p.filename,
      readonly: p.readonly ?? false,
      blockSizeOverride: p.block_size !== undefined && p.block_size > 0,
      fallocate: p.fallocate ?? false,
    };
    this.register(b);
    this.examine(b);
    return p.name;
  }

  aioDelete(p: P.NameOnly): Json {
    return this.deleteBaseBdev(p.name, 'aio');
  }

  // ---------------------------------------------------------------- bdev listing

  bdevJson(b: Bdev): Json {
    const { blockSize, numBlocks } = this.bdevSize(b);
    const claim = this.claimOf(b);
    const out: { [key: string]: Json } = {
      name: b.name,
      aliases: this.aliasesOf(b),
      product_name: PRODUCT[b.kind],
      block_size: blockSize,
      num_blocks: numBlocks,
      uuid: this.bdevUuid(b),
      assigned_rate_limits: { ...RATE_LIMITS },
      claimed: claim !== undefined,
    };
    if (claim) out.claim_type = claim;
    out.zoned = false;
    out.supported_io_types = ioTypes(b);
    const lvolBase = b.kind === 'lvol' ? this.lvsOfLvolBdev(b)?.lvs.baseBdev : undefined;
    if (b.kind === 'malloc' || (lvolBase !== undefined && this.bdevs.get(lvolBase)?.kind === 'malloc')) {
      out.memory_domains = [{ dma_device_id: 'SPDK_ACCEL_DMA_DEVICE', dma_device_type: 2 }];
    }
    out.driver_specific = this.driverSpecific(b);
    return out;
  }

  private driverSpecific(b: Bdev): Json {
    switch (b.kind) {
      case 'malloc':
        return {};
      case 'aio':
        return { aio: { filename: b.filename, block_size_override: b.blockSizeOverride, readonly: b.readonly, fallocate: b.fallocate } };
      case 'nvme': {
        const c = this.nvmeControllers.get(b.controller);
        const trid = c ? { ...c.trid } : {};
        return {
          nvme: [
            {
              trid,
              ctrlr_data: { cntlid: 1, vendor_id: '0x8086', model_number: 'SPDK bdev Controller', serial_number: 'SPDK00000000000001', firmware_revision: '24.01', subnqn: c?.trid.subnqn ?? '', oacs: { security: 0, format: 0, firmware: 0, ns_manage: 0 }, multi_ctrlr: true, ana_reporting: false },
              vs: { nvme_version: '1.3' },
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
          num_allocated_clusters: lvol.allocated,
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

  // ---------------------------------------------------------------- lvstores

  private verifyName(name: string): void {
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

  private lvsJson(lvs: Lvstore): Json {
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

  // ---------------------------------------------------------------- lvols

  /** lvs_verify_lvol_name: the errno, reported sync (raw) or via callback (-32602) by the caller. */
  private lvolNameProblem(lvs: Lvstore, name: string | undefined): 'EINVAL' | 'EEXIST' | undefined {
    if (name === undefined || name.length === 0 || name.length >= NAME_MAX) return 'EINVAL';
    if (lvs.lvols.some((l) => l.name === name)) return 'EEXIST';
    return undefined;
  }

  private addLvol(lvs: Lvstore, lvol: Lvol): string {
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

  lvolSnapshot(p: P.LvolSnapshot): Json {
    const { lvs, lvol } = this.lvolByBdevName(p.lvol_name);
    const problem = this.lvolNameProblem(lvs, p.snapshot_name);
    if (problem) throw invalidParams(problem);
    if (lvol.readOnly) throw invalidParams('EINVAL');
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
    if (size.blockSize > lvs.blockSize) throw invalidParams('EINVAL');
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
  private chainAllocated(lvs: Lvstore, lvol: Lvol): number {
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

  lvolInflate(p: P.NameOnly): Json {
    const { lvs, lvol } = this.lvolByBdevName(p.name);
    if (lvol.readOnly) throw invalidParams('EPERM');
    const need = lvol.clusters - lvol.allocated;
    if (need > this.freeClusters(lvs)) throw invalidParams('ENOSPC');
    lvol.allocated = lvol.clusters;
    lvol.thin = false;
    lvol.parent = null;
    this.persist(lvs);
    return true;
  }

  lvolDecoupleParent(p: P.NameOnly): Json {
    const { lvs, lvol } = this.lvolByBdevName(p.name);
    if (lvol.readOnly) throw invalidParams('EPERM');
    const parent = lvol.parent;
    if (!parent) throw invalidParams('EINVAL');
    const target = Math.max(lvol.allocated, this.chainAllocated(lvs, lvol));
    if (target - lvol.allocated > this.freeClusters(lvs)) throw invalidParams('ENOSPC');
    lvol.allocated = target;
    if (parent.kind === 'esnap') lvol.parent = null;
    else lvol.parent = lvs.lvols.find((l) => l.uuid === parent.uuid)?.parent ?? null;
    this.persist(lvs);
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
  private lvolForDelete(name: string): { lvs: Lvstore; lvol: Lvol } {
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

  lvolDelete(p: P.LvolDelete): Json {
    const { lvs, lvol } = this.lvolForDelete(p.name);
    const clones = this.clonesOf(lvs, lvol.uuid);
    // vbdev_lvol_destroy refuses a snapshot with more than one clone; with exactly one, the
    // blobstore merges the snapshot into its clone.
    if (clones.length > 1) throw internalError('EPERM');
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
      lvs.lvols.map((lvol) => ({
        alias: `${lvs.name}/${lvol.name}`,
        uuid: lvol.uuid,
        name: lvol.name,
        is_thin_provisioned: lvol.thin,
        is_snapshot: this.isSnapshot(lvs, lvol),
        is_clone: lvol.parent?.kind === 'snapshot',
        is_esnap_clone: lvol.parent?.kind === 'esnap',
        is_degraded: this.isDegraded(lvol),
        lvs: { name: lvs.name, uuid: lvs.uuid },
      })),
    );
  }

  // ---------------------------------------------------------------- vhost

  /**
   * The checks of vhost_create_blk_controller before the socket is bound, in SPDK's order:
   * open the bdev for writing, parse the cpumask, refuse a duplicate name, build the path.
   */
  prepareVhostController(p: P.VhostCreateBlk): VhostController {
    const b = this.resolveBdev(p.dev_name);
    if (!b) throw invalidParams('ENODEV');
    // Opening for write fails on a claimed bdev, but vhost itself takes no claim.
    if (this.claimOf(b)) throw invalidParams('EPERM');
    let mask = this.env.coreMask;
    if (p.cpumask !== undefined) {
      const parsed = parseCpumask(p.cpumask);
      if (parsed === undefined || parsed === 0n || (parsed & ~this.env.coreMask) !== 0n) {
        this.env.log('cpumask is invalid', { cpumask: p.cpumask, core_mask: formatMask(this.env.coreMask) });
        throw invalidParams('EINVAL');
      }
      mask = parsed;
    }
    if (this.controllers.has(p.ctrlr)) throw invalidParams('EEXIST');
    const socket = path.join(this.env.vhostDir, p.ctrlr);
    if (Buffer.byteLength(socket) > SUN_PATH_MAX || p.ctrlr.length === 0) {
      this.env.log('socket path for controller is too long', { ctrlr: p.ctrlr, socket });
      throw invalidParams('EINVAL');
    }
    return {
      name: p.ctrlr,
      bdev: b.name,
      cpumask: formatMask(mask),
      readonly: p.readonly ?? false,
      packedRing: p.packed_ring ?? false,
      socket,
    };
  }

  addVhostController(c: VhostController): Json {
    this.controllers.set(c.name, c);
    return true;
  }

  removeVhostController(p: P.VhostDelete): VhostController {
    const c = this.controllers.get(p.ctrlr);
    if (!c) throw invalidParams('ENODEV');
    this.controllers.delete(p.ctrlr);
    return c;
  }

  getVhostControllers(p: P.VhostGet | undefined, sessionsOf: (c: VhostController) => SessionInfo[]): Json {
    let list = [...this.controllers.values()];
    if (p?.name !== undefined) {
      const c = this.controllers.get(p.name);
      if (!c) throw internalError('ENODEV');
      list = [c];
    }
    return list.map((c) => ({
      ctrlr: c.name,
      cpumask: c.cpumask,
      delay_base_us: 0,
      iops_threshold: 60000,
      socket: c.socket,
      sessions: sessionsOf(c) as unknown as Json,
      backend_specific: { block: { readonly: c.readonly, bdev: c.bdev, transport: 'vhost_user_blk' } },
    }));
  }

  // ---------------------------------------------------------------- OCF

  private ocfFail(status: number): RpcError {
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

  // ---------------------------------------------------------------- NVMe-oF target

  nvmfCreateTransport(p: P.NvmfCreateTransport): Json {
    const trtype = p.trtype.toUpperCase();
    if (!['TCP', 'RDMA', 'VFIOUSER'].includes(trtype)) throw new RpcError(JSONRPC_INVALID_PARAMS, `Invalid transport type '${p.trtype}'`);
    if (this.transports.has(trtype)) throw new RpcError(JSONRPC_INVALID_PARAMS, `Transport type '${trtype}' already exists`);
    const { trtype: _t, tgt_name: _n, ...opts } = p;
    this.transports.set(trtype, opts as Record<string, Json>);
    return true;
  }

  nvmfGetTransports(p: P.NvmfGetTransports | undefined): Json {
    const list = [...this.transports.entries()].filter(([t]) => p?.trtype === undefined || t === p.trtype.toUpperCase());
    if (p?.trtype !== undefined && list.length === 0) throw new RpcError(JSONRPC_INVALID_PARAMS, `Invalid parameters`);
    return list.map(([trtype, opts]) => ({
      trtype,
      max_queue_depth: 128,
      max_io_qpairs_per_ctrlr: 127,
      in_capsule_data_size: 4096,
      max_io_size: 131072,
      io_unit_size: 131072,
      max_aq_depth: 128,
      num_shared_buffers: 511,
      buf_cache_size: 4294967295,
      dif_insert_or_strip: false,
      zcopy: false,
      abort_timeout_sec: 1,
      ack_timeout: 0,
      data_wr_pool_size: 0,
      ...opts,
    }));
  }

  nvmfCreateSubsystem(p: P.NvmfCreateSubsystem): Json {
    if (!p.nqn.startsWith('nqn.') || p.nqn.length > 223 || this.subsystems.has(p.nqn) || p.nqn === DISCOVERY_NQN) {
      throw new RpcError(JSONRPC_INTERNAL_ERROR, `Unable to create subsystem ${p.nqn}`);
    }
    this.subsystems.set(p.nqn, {
      nqn: p.nqn,
      serialNumber: p.serial_number ?? '00000000000000000000',
      modelNumber: p.model_number ?? 'SPDK bdev Controller',
      allowAnyHost: p.allow_any_host ?? false,
      hosts: [],
      maxNamespaces: p.max_namespaces ?? 0,
      listeners: [],
      namespaces: [],
    });
    return true;
  }

  private subsystem(nqn: string): NvmfSubsystem {
    const s = this.subsystems.get(nqn);
    if (!s) throw new RpcError(JSONRPC_INVALID_PARAMS, `Unable to find subsystem with NQN ${nqn}`);
    return s;
  }

  nvmfDeleteSubsystem(p: P.NqnOnly): Json {
    const s = this.subsystems.get(p.nqn);
    if (!s) throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    for (const l of s.listeners) this.unlistenIfUnused(l, s);
    this.subsystems.delete(p.nqn);
    return true;
  }

  private unlistenIfUnused(address: ListenAddress, except: NvmfSubsystem): void {
    const key = NvmfFabric.key(address);
    const used = [...this.subsystems.values()].some((s) => s !== except && s.listeners.some((l) => NvmfFabric.key(l) === key));
    if (!used) this.env.fabric.unlisten(address, this);
  }

  nvmfAddListener(p: P.NvmfListener): Json {
    const s = this.subsystem(p.nqn);
    const a = p.listen_address;
    const address: ListenAddress = { trtype: a.trtype.toUpperCase(), adrfam: (a.adrfam ?? 'IPv4').replace(/^ipv/i, 'IPv'), traddr: a.traddr, trsvcid: a.trsvcid ?? '' };
    if (!this.transports.has(address.trtype)) throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    const key = NvmfFabric.key(address);
    if (s.listeners.some((l) => NvmfFabric.key(l) === key)) throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    if (!this.env.fabric.listen(address, this)) {
      this.env.log('listen address in use by another target', { traddr: address.traddr, trsvcid: address.trsvcid });
      throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    }
    s.listeners.push(address);
    return true;
  }

  nvmfRemoveListener(p: P.NvmfListener): Json {
    const s = this.subsystem(p.nqn);
    const key = NvmfFabric.key({ trtype: p.listen_address.trtype, traddr: p.listen_address.traddr, trsvcid: p.listen_address.trsvcid ?? '' });
    const found = s.listeners.find((l) => NvmfFabric.key(l) === key);
    if (!found) throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    s.listeners = s.listeners.filter((l) => l !== found);
    this.unlistenIfUnused(found, s);
    return true;
  }

  nvmfAddNamespace(p: P.NvmfAddNs): Json {
    const s = this.subsystem(p.nqn);
    const b = this.resolveBdev(p.namespace.bdev_name);
    const used = new Set(s.namespaces.map((n) => n.nsid));
    let nsid = p.namespace.nsid ?? 0;
    if (nsid === 0) {
      nsid = 1;
      while (used.has(nsid)) nsid++;
    }
    const full = s.maxNamespaces > 0 && nsid > s.maxNamespaces;
    if (!b || this.claimOf(b) || used.has(nsid) || full) {
      this.env.log('Unable to add namespace', { nqn: p.nqn, bdev: p.namespace.bdev_name });
      throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    }
    s.namespaces.push({ nsid, bdevName: b.name, uuid: p.namespace.uuid ?? this.bdevUuid(b) });
    s.namespaces.sort((x, y) => x.nsid - y.nsid);
    return nsid;
  }

  nvmfRemoveNamespace(p: P.NvmfRemoveNs): Json {
    const s = this.subsystem(p.nqn);
    if (!s.namespaces.some((n) => n.nsid === p.nsid)) throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    s.namespaces = s.namespaces.filter((n) => n.nsid !== p.nsid);
    return true;
  }

  nvmfHost(p: P.NvmfHost, add: boolean): Json {
    const s = this.subsystem(p.nqn);
    s.hosts = s.hosts.filter((h) => h !== p.host);
    if (add) s.hosts.push(p.host);
    return true;
  }

  nvmfAllowAnyHost(p: P.NvmfAllowAnyHost): Json {
    this.subsystem(p.nqn).allowAnyHost = p.allow_any_host;
    return true;
  }

  nvmfGetSubsystems(p: P.NvmfGetSubsystems | undefined): Json {
    const discovery = {
      nqn: DISCOVERY_NQN,
      subtype: 'Discovery',
      listen_addresses: [],
      allow_any_host: true,
      hosts: [],
    };
    let list: Json[] = [
      discovery,
      ...[...this.subsystems.values()].map((s) => ({
        nqn: s.nqn,
        subtype: 'NVMe',
        listen_addresses: s.listeners.map((l) => ({ ...l })),
        allow_any_host: s.allowAnyHost,
        hosts: s.hosts.map((nqn) => ({ nqn })),
        serial_number: s.serialNumber,
        model_number: s.modelNumber,
        max_namespaces: s.maxNamespaces,
        min_cntlid: 1,
        max_cntlid: 65519,
        namespaces: s.namespaces.map((n) => ({ nsid: n.nsid, bdev_name: n.bdevName, name: n.bdevName, uuid: n.uuid })),
      })),
    ];
    if (p?.nqn !== undefined) {
      list = list.filter((s) => (s as { nqn: string }).nqn === p.nqn);
      if (list.length === 0) throw new RpcError(JSONRPC_INVALID_PARAMS, 'Invalid parameters');
    }
    return list;
  }

  /** NvmfTarget: what an initiator attaching to this simulator's subsystem sees. */
  connect(nqn: string, address: ListenAddress, hostnqn: string): RemoteNamespace[] | undefined {
    const s = this.subsystems.get(nqn);
    if (!s) return undefined;
    const key = NvmfFabric.key(address);
    if (!s.listeners.some((l) => NvmfFabric.key(l) === key)) return undefined;
    if (!s.allowAnyHost && !s.hosts.includes(hostnqn)) return undefined;
    return s.namespaces.flatMap((ns) => {
      const b = this.bdevs.get(ns.bdevName);
      return b ? [{ nsid: ns.nsid, uuid: ns.uuid, ...this.bdevSize(b) }] : [];
    });
  }

  // ---------------------------------------------------------------- NVMe initiator

  nvmeAttach(p: P.NvmeAttach): Json {
    const existing = this.nvmeControllers.get(p.name);
    if (existing) throw new RpcError(-114, `A controller named ${p.name} already exists with the specified network path\n`);
    const trtype = p.trtype.toUpperCase();
    const address: ListenAddress = { trtype, adrfam: (p.adrfam ?? 'IPv4').replace(/^ipv/i, 'IPv'), traddr: p.traddr, trsvcid: p.trsvcid ?? '4420' };
    const hostnqn = p.hostnqn ?? `nqn.2014-08.org.nvmexpress:uuid:${this.env.randomUuid()}`;
    const subnqn = p.subnqn ?? DISCOVERY_NQN;
    const namespaces = trtype === 'PCIE' ? undefined : this.env.fabric.lookup(address)?.connect(subnqn, address, hostnqn);
    if (!namespaces) {
      this.env.log('failed to connect to NVMe controller', { name: p.name, traddr: p.traddr, trsvcid: address.trsvcid, subnqn });
      throw rawErrno('EIO');
    }
    const names = namespaces.map((ns) => `${p.name}n${ns.nsid}`);
    if (names.some((n) => this.resolveBdev(n))) throw rawErrno('EEXIST');
    this.nvmeControllers.set(p.name, { name: p.name, trid: { ...address, subnqn }, hostnqn, bdevs: names });
    namespaces.forEach((ns, i) => {
      this.register({ kind: 'nvme', name: names[i] ?? '', uuid: ns.uuid, blockSize: ns.blockSize, numBlocks: ns.numBlocks, controller: p.name, nsid: ns.nsid });
    });
    return names;
  }

  nvmeDetach(p: P.NvmeDetach): Json {
    const c = this.nvmeControllers.get(p.name);
    if (!c) throw rawErrno('ENODEV');
    this.nvmeControllers.delete(p.name);
    for (const b of c.bdevs) this.unregister(b);
    return true;
  }

  nvmeGetControllers(p: P.OptionalName | undefined): Json {
    let list = [...this.nvmeControllers.values()];
    if (p?.name !== undefined) {
      const c = this.nvmeControllers.get(p.name);
      if (!c) throw rawErrno('ENODEV');
      list = [c];
    }
    return list.map((c) => ({
      name: c.name,
      ctrlrs: [{ state: 'enabled', trid: { ...c.trid }, cntlid: 1, host: { nqn: c.hostnqn, addr: '', svcid: '' } }],
    }));
  }

  /** Read-only copy of the whole model, for tests. */
  snapshot(sessionsOf: (c: VhostController) => number): ModelSnapshot {
    return structuredClone({
      bdevs: [...this.bdevs.values()].map((b) => ({ name: b.name, kind: b.kind, uuid: this.bdevUuid(b), claim: this.claimOf(b) ?? null, ...this.bdevSize(b) })),
      lvstores: [...this.lvstores.values()].map((l) => ({ uuid: l.uuid, name: l.name, baseBdev: l.baseBdev, clusterSize: l.clusterSize, totalClusters: l.totalClusters, freeClusters: this.freeClusters(l) })),
      lvols: [...this.lvstores.values()].flatMap((lvs) => lvs.lvols.map((l) => ({ ...l, lvs: lvs.name, alias: `${lvs.name}/${l.name}`, degraded: this.isDegraded(l) }))),
      controllers: [...this.controllers.values()].map((c) => ({ ...c, sessions: sessionsOf(c) })),
      ocf: [...this.ocf.values()],
      subsystems: [...this.subsystems.values()],
      nvmeControllers: [...this.nvmeControllers.values()],
    });
  }
}

export interface ModelSnapshot {
  bdevs: Array<{ name: string; kind: Bdev['kind']; uuid: string; claim: ClaimType | null; blockSize: number; numBlocks: number }>;
  lvstores: Array<{ uuid: string; name: string; baseBdev: string; clusterSize: number; totalClusters: number; freeClusters: number }>;
  lvols: Array<Lvol & { lvs: string; alias: string; degraded: boolean }>;
  controllers: Array<VhostController & { sessions: number }>;
  ocf: OcfVbdev[];
  subsystems: NvmfSubsystem[];
  nvmeControllers: NvmeController[];
}

const PRODUCT: Record<Bdev['kind'], string> = {
  malloc: 'Malloc disk',
  aio: 'AIO disk',
  nvme: 'NVMe disk',
  ocf: 'SPDK OCF',
  lvol: 'Logical Volume',
};

function ioTypes(b: Bdev): Json {
  const base = {
    read: true,
    write: true,
    unmap: true,
    write_zeroes: true,
    flush: true,
    reset: true,
    compare: false,
    compare_and_write: false,
    abort: true,
    nvme_admin: false,
    nvme_io: false,
  };
  switch (b.kind) {
    case 'aio':
      return { ...base, write: !b.readonly, unmap: b.fallocate, write_zeroes: b.fallocate, abort: false };
    case 'lvol':
      return { ...base, abort: false };
    case 'nvme':
      return { ...base, compare: true, compare_and_write: true, nvme_admin: true, nvme_io: true };
    case 'ocf':
      return { ...base, abort: false };
    case 'malloc':
      return base;
  }
}
