import { rawErrno, type RpcError } from './errors.js';
import type { NvmfFabric } from './fabric.js';
import type { AioBdev, Bdev, ClaimType, Lvol, Lvstore, LvstoreMeta, NvmeController, NvmfSubsystem, OcfVbdev, VhostController } from './state.js';
import { versionProfile, type VersionProfile } from './version.js';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export const MiB = 1024 * 1024;
export const DEFAULT_CLUSTER_SIZE = 4 * MiB;
export const BS_PAGE_SIZE = 4096;
/** spdk_lvol.h: SPDK_LVOL_NAME_MAX / SPDK_LVS_NAME_MAX, including the terminating NUL. */
export const NAME_MAX = 64;
/** OCF refuses cache devices smaller than this (OCF_CACHE_SIZE_MIN). */
export const OCF_CACHE_SIZE_MIN = 20 * MiB;
/** sun_path is 108 bytes including the NUL. */
export const SUN_PATH_MAX = 107;
export const DISCOVERY_NQN = 'nqn.2014-08.org.nvmexpress.discovery';
export const OCF_MODES = new Set(['wb', 'wt', 'pt', 'wa', 'wi', 'wo']);

/** Where the model meets the outside world; injected so that the model itself stays pure. */
export interface ModelEnv {
  randomUuid(): string;
  /** Size in bytes of a file; throws RpcError (-2) when it does not exist. */
  fileSize(filename: string): number;
  /** Block size the OS reports for a block device; undefined (or 0) for a regular file. */
  fileBlockSize?(filename: string): number | undefined;
  /** Blobstore metadata on persistent base bdevs (aio files), keyed by file path. */
  loadLvstore(filename: string): LvstoreMeta | undefined;
  saveLvstore(filename: string, meta: LvstoreMeta): void;
  removeLvstore(filename: string): void;
  /** The target's core mask (spdk_tgt -m). */
  coreMask: bigint;
  vhostDir: string;
  fabric: NvmfFabric;
  log(event: string, fields: Record<string, unknown>): void;
  /** Which SPDK release to answer as; default v24.01. */
  profile?: VersionProfile;
  /** Open vhost-user sessions of a controller (a running VM), for channels that outlive an inflate. */
  openSessions?(c: VhostController): number;
  /** How long bdev_nvme_detach_controller waits for its bdevs' users before -110; SPDK: 10 s. */
  detachTimeoutMs?: number;
  /** The real target dies here (a sequence seen to crash spdk_tgt). */
  crash?(reason: string): void;
}

/**
 * An answer that comes later: the RPC completes when `done()` holds (checked on every poll),
 * with `result()`; after `timeoutMs` (if set) it fails with `onTimeout`.
 */
export class Pending {
  constructor(
    readonly done: () => boolean,
    readonly onTimeout: RpcError | undefined,
    readonly result: () => Json,
    readonly timeoutMs?: number,
  ) {}
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

export const formatMask = (mask: bigint): string => `0x${mask.toString(16)}`;

export const RATE_LIMITS = { rw_ios_per_sec: 0, rw_mbytes_per_sec: 0, r_mbytes_per_sec: 0, w_mbytes_per_sec: 0 };

/**
 * The registry every subsystem shares: bdevs by name (registration order is the order
 * bdev_get_bdevs lists them in), lvstores, controllers, NVMe-oF state, and the look-ups, claims
 * and hot-plug rules that tie them together. The subsystems (bdev.ts, lvol.ts, vhost-ctrl.ts,
 * ocf.ts, nvmf.ts) extend it in turn; model.ts is the whole target.
 */
export class BdevRegistry {
  readonly bdevs = new Map<string, Bdev>();
  readonly lvstores = new Map<string, Lvstore>();
  readonly controllers = new Map<string, VhostController>();
  readonly ocf = new Map<string, OcfVbdev>();
  readonly transports = new Map<string, Record<string, Json>>();
  readonly subsystems = new Map<string, NvmfSubsystem>();
  readonly nvmeControllers = new Map<string, NvmeController>();
  /**
   * Bdevs whose unregister waits for an open descriptor to close: gone by name, still what
   * the esnap clones holding them read through (bdev_aio_delete of an external snapshot in use).
   */
  readonly unregistering = new Map<string, Bdev>();
  /** Blobs with a metadata operation in flight (SPDK's locked_operation_in_progress). */
  readonly inFlight = new Set<string>();
  /** Lvols whose creation has not completed yet: they have no bdev until it does. */
  readonly creating = new Set<string>();
  protected mallocCounter = 0;
  /**
   * Bdev name -> vhost controllers whose threads kept an I/O channel to it after an inflate
   * took their lvol off it (the v25.09 recording: a VM that read through an esnap clone).
   */
  protected readonly leakedChannels = new Map<string, Set<string>>();
  readonly profile: VersionProfile;

  constructor(protected readonly env: ModelEnv) {
    this.profile = env.profile ?? versionProfile('24.01');
  }

  // ---------------------------------------------------------------- lookups

  protected lvsOfLvolBdev(b: Bdev): { lvs: Lvstore; lvol: Lvol } | undefined {
    if (b.kind !== 'lvol') return undefined;
    const lvs = this.lvstores.get(b.lvsUuid);
    const lvol = lvs?.lvols.find((l) => l.uuid === b.name);
    return lvs && lvol ? { lvs, lvol } : undefined;
  }

  bdevUuid(b: Bdev): string {
    return b.kind === 'lvol' ? b.name : b.uuid;
  }

  protected bdevSize(b: Bdev): { blockSize: number; numBlocks: number } {
    if (b.kind !== 'lvol') return { blockSize: b.blockSize, numBlocks: b.numBlocks };
    const found = this.lvsOfLvolBdev(b);
    if (!found) return { blockSize: 512, numBlocks: 0 };
    const { lvs, lvol } = found;
    return { blockSize: lvs.blockSize, numBlocks: (lvol.clusters * lvs.clusterSize) / lvs.blockSize };
  }

  protected aliasesOf(b: Bdev): string[] {
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

  protected bdevByUuid(uuid: string): Bdev | undefined {
    for (const b of this.bdevs.values()) if (this.bdevUuid(b) === uuid) return b;
    return undefined;
  }

  /** The bdev an esnap clone reads through: registered, or still held open while unregistering. */
  protected esnapSource(uuid: string): Bdev | undefined {
    const b = this.bdevByUuid(uuid);
    if (b) return b;
    for (const z of this.unregistering.values()) if (this.bdevUuid(z) === uuid) return z;
    return undefined;
  }

  protected lvsByName(name: string): Lvstore | undefined {
    for (const lvs of this.lvstores.values()) if (lvs.name === name) return lvs;
    return undefined;
  }

  /** vbdev_get_lvol_store_by_uuid_xor_name: raw errno codes. */
  protected lvsByUuidXorName(uuid: string | undefined, name: string | undefined): Lvstore {
    if ((uuid === undefined) === (name === undefined)) throw rawErrno('EINVAL');
    const lvs = uuid !== undefined ? this.lvstores.get(uuid) : this.lvsByName(name ?? '');
    if (!lvs) throw rawErrno('ENODEV');
    return lvs;
  }

  /** The lvol behind a bdev name, as the lvol RPCs look it up (-19 otherwise). */
  protected lvolByBdevName(name: string): { lvs: Lvstore; lvol: Lvol } {
    const b = this.resolveBdev(name);
    const found = b ? this.lvsOfLvolBdev(b) : undefined;
    if (!found) throw rawErrno('ENODEV');
    return found;
  }

  protected clonesOf(lvs: Lvstore, uuid: string): Lvol[] {
    return lvs.lvols.filter((l) => l.parent?.kind === 'snapshot' && l.parent.uuid === uuid);
  }

  /**
   * An lvol whose chain ends in an external snapshot that no bdev stands for: esnap clones,
   * snapshots that are esnap clones, and every clone of those (as the v25.09 recording shows
   * after a restart).
   */
  isDegraded(lvol: Lvol): boolean {
    const lvs = [...this.lvstores.values()].find((s) => s.lvols.includes(lvol));
    let parent = lvol.parent;
    for (let depth = 0; parent && depth <= (lvs?.lvols.length ?? 0); depth++) {
      if (parent.kind === 'esnap') return this.esnapSource(parent.bdevUuid) === undefined;
      const uuid = parent.uuid;
      parent = lvs?.lvols.find((l) => l.uuid === uuid)?.parent ?? null;
    }
    return false;
  }

  /**
   * A snapshot is an lvol with clones; one made in this session stays one after its last
   * clone goes, one loaded from disk does not (recorded on v24.01 after a restart).
   */
  protected isSnapshot(lvs: Lvstore, lvol: Lvol): boolean {
    return (lvol.snapshot && !this.reloaded.has(lvol.uuid)) || this.clonesOf(lvs, lvol.uuid).length > 0;
  }

  /** Lvols loaded from a blobstore on disk (examine) rather than made in this session. */
  protected readonly reloaded = new Set<string>();

  /** Who holds a claim on a bdev (SPDK's bdev claims); undefined when unclaimed. */
  claimOf(b: Bdev): ClaimType | undefined {
    // The blobstore claims its base for one writer and many readers (bs_dev claim).
    for (const lvs of this.lvstores.values()) if (lvs.baseBdev === b.name) return 'read_many_write_one';
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

  /** Whether a reader still holds an I/O channel to `bdev` (a session open on a leaking controller). */
  protected channelHeld(bdev: string): boolean {
    const ctrls = this.leakedChannels.get(bdev);
    if (!ctrls) return false;
    for (const name of ctrls) {
      const c = this.controllers.get(name);
      if (c && (this.env.openSessions?.(c) ?? 0) > 0) return true;
    }
    this.leakedChannels.delete(bdev);
    return false;
  }

  /** The external snapshot UUID at the end of an lvol's chain, if any. */
  protected esnapUuidOf(lvs: Lvstore, lvol: Lvol): string | undefined {
    let parent = lvol.parent;
    for (let depth = 0; parent && depth <= lvs.lvols.length; depth++) {
      if (parent.kind === 'esnap') return parent.bdevUuid;
      const uuid = parent.uuid;
      parent = lvs.lvols.find((l) => l.uuid === uuid)?.parent ?? null;
    }
    return undefined;
  }

  /** Whether any lvol names `uuid` as its external snapshot. */
  protected esnapUsers(uuid: string): boolean {
    for (const lvs of this.lvstores.values()) if (lvs.lvols.some((l) => l.parent?.kind === 'esnap' && l.parent.bdevUuid === uuid)) return true;
    return false;
  }

  protected freeClusters(lvs: Lvstore): number {
    return lvs.totalClusters - (lvs.leakedClusters ?? 0) - lvs.lvols.reduce((sum, l) => sum + l.allocated, 0);
  }

  protected clustersFor(lvs: Lvstore, bytes: number): number {
    return Math.ceil(bytes / lvs.clusterSize);
  }

  // ---------------------------------------------------------------- registration

  protected register(b: Bdev): void {
    this.bdevs.set(b.name, b);
    // A bdev coming (back) may complete degraded external-snapshot clones.
    if (b.kind !== 'lvol') this.syncLvolBdevs();
  }

  /** Hot-remove: what SPDK's bdev users do when a bdev under them goes away. */
  protected unregister(name: string): void {
    const b = this.bdevs.get(name);
    if (!b) return;
    this.bdevs.delete(name);
    // The lvol module ignores the hot-remove of an external snapshot ("unsupported event type
    // 0") and keeps its descriptor open: the bdev is gone by name, its clones still read
    // through it, and the unregister completes when the last of them lets go.
    if (this.claimOf(b) === 'read_many_write_none') this.unregistering.set(name, b);
    for (const c of this.controllers.values()) if (c.bdev === name) c.bdev = null;
    for (const s of this.subsystems.values()) {
      const dropped = s.namespaces.filter((ns) => ns.bdevName === name);
      s.namespaces = s.namespaces.filter((ns) => ns.bdevName !== name);
      // Hosts connected to the subsystem learn it (namespace attribute AEN) and drop their bdev.
      for (const ns of dropped) this.env.fabric.namespaceGone(s.listeners, s.nqn, ns.nguid);
    }
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
  protected syncLvolBdevs(): void {
    for (const [name, z] of this.unregistering) if (!this.esnapUsers(this.bdevUuid(z))) this.unregistering.delete(name);
    for (const lvs of this.lvstores.values()) {
      for (const lvol of lvs.lvols) {
        const registered = this.bdevs.has(lvol.uuid);
        const degraded = this.isDegraded(lvol) || this.creating.has(lvol.uuid);
        if (!registered && !degraded) this.bdevs.set(lvol.uuid, { kind: 'lvol', name: lvol.uuid, lvsUuid: lvs.uuid });
        if (registered && degraded) this.unregister(lvol.uuid);
      }
    }
  }

  protected persist(lvs: Lvstore): void {
    if (lvs.persistKey === undefined) return;
    const { uuid, name, clusterSize, totalClusters, blockSize, lvols } = lvs;
    this.env.saveLvstore(lvs.persistKey, { uuid, name, clusterSize, totalClusters, blockSize, lvols });
  }

  /** SPDK's examine: a bdev carrying a blobstore brings its lvstore and lvols back. */
  protected examine(b: AioBdev): void {
    const meta = this.env.loadLvstore(b.filename);
    if (!meta) return;
    if (this.lvstores.has(meta.uuid) || this.lvsByName(meta.name)) {
      this.env.log('lvstore not loaded: name or uuid in use', { lvs: meta.name, base_bdev: b.name });
      return;
    }
    const lvs: Lvstore = { ...structuredClone(meta), baseBdev: b.name, persistKey: b.filename };
    // After a load, a snapshot is a read-only lvol that has clones: one whose clones are all
    // gone no longer lists as a snapshot (recorded on v24.01 after a restart).
    for (const l of lvs.lvols) this.reloaded.add(l.uuid);
    lvs.lvols.sort((a, b) => (a.blobId ?? 0) - (b.blobId ?? 0));
    this.lvstores.set(lvs.uuid, lvs);
    this.syncLvolBdevs();
    this.env.log('lvstore loaded', { lvs: lvs.name, base_bdev: b.name, lvols: lvs.lvols.length });
  }

}
