import { z } from 'zod';

/**
 * The simulator's model types. Lvstore and lvol metadata are zod schemas because they are
 * also what gets persisted (the blobstore's on-disk metadata, in SPDK terms) and read back
 * after a restart.
 */
export const LvolParentSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('snapshot'), uuid: z.string() }),
  // An external snapshot is referred to by the bdev's UUID, as SPDK stores it.
  z.object({ kind: z.literal('esnap'), bdevUuid: z.string() }),
]);

export const LvolSchema = z.object({
  uuid: z.string(),
  name: z.string(),
  /** Size in clusters (SPDK rounds an lvol's size up to whole clusters). */
  clusters: z.number().int().nonnegative(),
  thin: z.boolean(),
  /**
   * Clusters this lvol owns. Without writes, allocation is always a prefix of the lvol
   * (thick create, inflate, decouple and snapshot all work on prefixes), so a count is exact.
   */
  allocated: z.number().int().nonnegative(),
  parent: LvolParentSchema.nullable(),
  /** Created by bdev_lvol_snapshot. */
  snapshot: z.boolean(),
  readOnly: z.boolean(),
  /** Blob id: the lowest free one at creation; a load lists lvols in this order. */
  blobId: z.number().int().nonnegative().optional(),
});
export type Lvol = z.infer<typeof LvolSchema>;
export type LvolParent = z.infer<typeof LvolParentSchema>;

export const LvstoreMetaSchema = z.object({
  uuid: z.string(),
  name: z.string(),
  clusterSize: z.number().int().positive(),
  totalClusters: z.number().int().nonnegative(),
  blockSize: z.number().int().positive(),
  lvols: z.array(LvolSchema),
});
export type LvstoreMeta = z.infer<typeof LvstoreMetaSchema>;

/** One persisted lvstore, keyed by the aio file it lives on. */
export const PersistedLvstoreSchema = z.object({
  version: z.literal(1),
  filename: z.string(),
  lvstore: LvstoreMetaSchema,
});
export type PersistedLvstore = z.infer<typeof PersistedLvstoreSchema>;

export interface Lvstore extends LvstoreMeta {
  /** Name of the bdev the lvstore lives on. */
  baseBdev: string;
  /** Aio file path when the base bdev is persistent; undefined for malloc bases. */
  persistKey?: string;
  /** Clusters a failed operation left allocated until the lvstore is loaded again. */
  leakedClusters?: number;
}

export type ClaimType = 'exclusive_write' | 'read_many_write_one' | 'read_many_write_none';

interface BdevCommon {
  name: string;
  uuid: string;
  blockSize: number;
  numBlocks: number;
}
export interface MallocBdev extends BdevCommon {
  kind: 'malloc';
}
export interface AioBdev extends BdevCommon {
  kind: 'aio';
  filename: string;
  readonly: boolean;
  blockSizeOverride: boolean;
  fallocate: boolean;
}
export interface NvmeBdev extends BdevCommon {
  kind: 'nvme';
  controller: string;
  nsid: number;
  /** Whether the remote namespace takes unmap (a snapshot's does not). */
  unmap: boolean;
  /** The target dropped the namespace: reads fail. */
  gone?: boolean;
}
export interface OcfBdev extends BdevCommon {
  kind: 'ocf';
}
export interface LvolBdev {
  kind: 'lvol';
  /** The lvol's UUID, which is also the bdev name. */
  name: string;
  lvsUuid: string;
}
export type Bdev = MallocBdev | AioBdev | NvmeBdev | OcfBdev | LvolBdev;

export interface VhostController {
  name: string;
  /** Bdev name at creation (an lvol's UUID); null once the bdev was hot-removed. */
  bdev: string | null;
  cpumask: string;
  readonly: boolean;
  packedRing: boolean;
  /** The path the socket is bound at. */
  socket: string;
  /** The path vhost_get_controllers shows when `socket` had to be cut to sun_path. */
  displaySocket?: string;
}

export interface OcfVbdev {
  name: string;
  mode: string;
  cacheBdev: string;
  coreBdev: string;
  cacheAttached: boolean;
  coreAttached: boolean;
  started: boolean;
}

export interface ListenAddress {
  trtype: string;
  adrfam: string;
  traddr: string;
  trsvcid: string;
}

export interface NvmfNamespace {
  nsid: number;
  bdevName: string;
  uuid: string;
  /** 32 upper-case hex digits; what an initiator names the namespace's bdev by. */
  nguid: string;
}

export interface NvmfSubsystem {
  nqn: string;
  serialNumber: string;
  modelNumber: string;
  allowAnyHost: boolean;
  hosts: string[];
  maxNamespaces: number;
  listeners: ListenAddress[];
  namespaces: NvmfNamespace[];
  /** The controller id the next connect gets (min_cntlid first). */
  nextCntlid?: number;
  /** Hosts connected now, one controller per connect (nvmf_subsystem_get_controllers). */
  controllers?: Array<{ cntlid: number; hostnqn: string; hostid: string; address: string }>;
}

export interface NvmeController {
  name: string;
  trid: ListenAddress & { subnqn: string };
  hostnqn: string;
  bdevs: string[];
  serialNumber: string;
  modelNumber: string;
  cntlid: number;
  /** `deleting` after a detach that is still waiting for a user of its bdevs. */
  state: 'enabled' | 'deleting' | 'failed' | 'reconnect_is_delayed';
  /** ctrlr_loss_timeout_sec: 0 fails at the first loss, otherwise it keeps reconnecting. */
  lossTimeoutSec: number;
}
