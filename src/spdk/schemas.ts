/**
 * zod schemas of the SPDK v24.01 JSON-RPC methods we use (names as in SPDK's doc/jsonrpc.md
 * and python/spdk/rpc/*.py, checked against the recording in test/fixtures/spdk/).
 *
 * Params are `.strict()`: SPDK answers an unknown or mistyped member only with an opaque
 * "spdk_json_decode_object failed", so a typo is caught here, naming the field.
 * Results are `.passthrough()`: SPDK adds fields across versions; we require what we read.
 */
import { z } from 'zod';

const name = z.string().min(1);
const u32 = z.number().int().nonnegative();
const uuid = z.string().min(1);

// ---- generic ------------------------------------------------------------------------------

export const NoParams = z.undefined();

export const SpdkVersion = z
  .object({
    version: z.string(),
    fields: z
      .object({ major: z.number().int(), minor: z.number().int(), patch: z.number().int(), suffix: z.string() })
      .passthrough(),
  })
  .passthrough();
export type SpdkVersion = z.output<typeof SpdkVersion>;

export const RpcGetMethodsParams = z
  .object({ current: z.boolean().optional(), include_aliases: z.boolean().optional() })
  .strict();
export type RpcGetMethodsParams = z.input<typeof RpcGetMethodsParams>;

/** Most mutating methods answer `true`. */
export const True = z.literal(true);

// ---- bdev ---------------------------------------------------------------------------------

export const BdevGetBdevsParams = z
  .object({
    name: name.optional(),
    /** ms to wait for the bdev to appear (SPDK answers -110 after it). */
    timeout: u32.optional(),
  })
  .strict();
export type BdevGetBdevsParams = z.input<typeof BdevGetBdevsParams>;

export const Bdev = z
  .object({
    name: z.string(),
    aliases: z.array(z.string()).default([]),
    product_name: z.string(),
    block_size: z.number().int().positive(),
    num_blocks: z.number().int().nonnegative(),
    uuid: z.string().optional(),
    claimed: z.boolean().default(false),
    driver_specific: z.record(z.unknown()).default({}),
  })
  .passthrough();
export type Bdev = z.output<typeof Bdev>;
export const BdevList = z.array(Bdev);

export const BdevMallocCreateParams = z
  .object({
    name: name.optional(),
    num_blocks: z.number().int().positive(),
    block_size: z.number().int().positive(),
    physical_block_size: u32.optional(),
    uuid: uuid.optional(),
    optimal_io_boundary: u32.optional(),
    md_size: u32.optional(),
    md_interleave: z.boolean().optional(),
    dif_type: z.number().int().min(0).max(3).optional(),
    dif_is_head_of_md: z.boolean().optional(),
  })
  .strict();
export type BdevMallocCreateParams = z.input<typeof BdevMallocCreateParams>;

export const BdevNameParams = z.object({ name }).strict();
export type BdevNameParams = z.input<typeof BdevNameParams>;

export const BdevAioCreateParams = z
  .object({
    name,
    filename: z.string().min(1),
    /** Real SPDK cannot detect a regular file's block size (-22): give it. */
    block_size: u32.optional(),
    readonly: z.boolean().optional(),
    /** SPDK >= v24.09: a stable UUID (an esnap clone names its source by UUID). */
    uuid: uuid.optional(),
  })
  .strict();
export type BdevAioCreateParams = z.input<typeof BdevAioCreateParams>;

/** Create methods answer the new bdev's name (malloc, aio) or the lvol/lvstore UUID. */
export const CreatedName = z.string().min(1);

// ---- lvol ---------------------------------------------------------------------------------

const clearMethod = z.enum(['none', 'unmap', 'write_zeroes']);

export const BdevLvolCreateLvstoreParams = z
  .object({
    bdev_name: name,
    lvs_name: name,
    cluster_sz: z.number().int().positive().optional(),
    clear_method: clearMethod.optional(),
    num_md_pages_per_cluster_ratio: z.number().int().positive().optional(),
    md_pages_per_cluster_ratio: z.number().int().positive().optional(),
  })
  .strict();
export type BdevLvolCreateLvstoreParams = z.input<typeof BdevLvolCreateLvstoreParams>;

const exactlyOneStore = <T extends { uuid?: string; lvs_name?: string }>(p: T): boolean =>
  (p.uuid === undefined) !== (p.lvs_name === undefined);

export const BdevLvolGetLvstoresParams = z
  .object({ uuid: uuid.optional(), lvs_name: name.optional() })
  .strict()
  .refine((p) => !(p.uuid !== undefined && p.lvs_name !== undefined), {
    message: 'give at most one of uuid and lvs_name',
    path: ['lvs_name'],
  });
export type BdevLvolGetLvstoresParams = z.input<typeof BdevLvolGetLvstoresParams>;

export const Lvstore = z
  .object({
    uuid: z.string(),
    name: z.string(),
    base_bdev: z.string(),
    total_data_clusters: z.number().int().nonnegative(),
    free_clusters: z.number().int().nonnegative(),
    block_size: z.number().int().positive(),
    cluster_size: z.number().int().positive(),
  })
  .passthrough();
export type Lvstore = z.output<typeof Lvstore>;
export const LvstoreList = z.array(Lvstore);

export const BdevLvolCreateParams = z
  .object({
    lvol_name: name,
    size_in_mib: z.number().int().nonnegative(),
    thin_provision: z.boolean().optional(),
    /** UUID of the lvstore (SPDK's name for it here is plain `uuid`). */
    uuid: uuid.optional(),
    lvs_name: name.optional(),
    clear_method: clearMethod.optional(),
  })
  .strict()
  .refine(exactlyOneStore, { message: 'give exactly one of uuid and lvs_name', path: ['lvs_name'] });
export type BdevLvolCreateParams = z.input<typeof BdevLvolCreateParams>;

export const BdevLvolSnapshotParams = z.object({ lvol_name: name, snapshot_name: name }).strict();
export type BdevLvolSnapshotParams = z.input<typeof BdevLvolSnapshotParams>;

export const BdevLvolCloneParams = z.object({ snapshot_name: name, clone_name: name }).strict();
export type BdevLvolCloneParams = z.input<typeof BdevLvolCloneParams>;

/** External-snapshot clone: reads of unwritten clusters fall through to `bdev`. */
export const BdevLvolCloneBdevParams = z.object({ bdev: name, lvs_name: name, clone_name: name }).strict();
export type BdevLvolCloneBdevParams = z.input<typeof BdevLvolCloneBdevParams>;

export const BdevLvolResizeParams = z.object({ name, size_in_mib: z.number().int().nonnegative() }).strict();
export type BdevLvolResizeParams = z.input<typeof BdevLvolResizeParams>;

export const BdevLvolGetLvolsParams = z
  .object({ lvs_uuid: uuid.optional(), lvs_name: name.optional() })
  .strict()
  .refine((p) => !(p.lvs_uuid !== undefined && p.lvs_name !== undefined), {
    message: 'give at most one of lvs_uuid and lvs_name',
    path: ['lvs_name'],
  });
export type BdevLvolGetLvolsParams = z.input<typeof BdevLvolGetLvolsParams>;

export const Lvol = z
  .object({
    alias: z.string(),
    uuid: z.string(),
    name: z.string(),
    is_thin_provisioned: z.boolean(),
    is_snapshot: z.boolean(),
    is_clone: z.boolean(),
    is_esnap_clone: z.boolean().default(false),
    is_degraded: z.boolean().default(false),
    lvs: z.object({ name: z.string(), uuid: z.string() }).passthrough(),
  })
  .passthrough();
export type Lvol = z.output<typeof Lvol>;
export const LvolList = z.array(Lvol);

/** v24.09+: a thin lvol becomes a clone of a snapshot of the same size (keeps its own clusters). */
export const BdevLvolSetParentParams = z.object({ lvol_name: name, parent_name: name }).strict();
export type BdevLvolSetParentParams = z.input<typeof BdevLvolSetParentParams>;

export const BdevLvolRenameParams = z.object({ old_name: name, new_name: name }).strict();
export type BdevLvolRenameParams = z.input<typeof BdevLvolRenameParams>;

// ---- vhost --------------------------------------------------------------------------------

export const VhostCreateBlkControllerParams = z
  .object({
    /** May contain a `/`: the socket is then created in that subdirectory of SPDK's -S dir. */
    ctrlr: name,
    dev_name: name,
    cpumask: z.string().regex(/^(0x[0-9a-fA-F]+|\[[0-9,\s-]+\])$/, 'a hex mask like 0x1 or a core list like [0-3]').optional(),
    transport: z.string().min(1).optional(),
    readonly: z.boolean().optional(),
    packed_ring: z.boolean().optional(),
  })
  .strict();
export type VhostCreateBlkControllerParams = z.input<typeof VhostCreateBlkControllerParams>;

export const VhostDeleteControllerParams = z.object({ ctrlr: name }).strict();
export type VhostDeleteControllerParams = z.input<typeof VhostDeleteControllerParams>;

export const VhostGetControllersParams = z.object({ name: name.optional() }).strict();
export type VhostGetControllersParams = z.input<typeof VhostGetControllersParams>;

export const VhostController = z
  .object({
    ctrlr: z.string(),
    cpumask: z.string(),
    socket: z.string(),
    delay_base_us: z.number().optional(),
    iops_threshold: z.number().optional(),
    sessions: z.array(z.record(z.unknown())).default([]),
    backend_specific: z
      .object({
        block: z
          .object({
            readonly: z.boolean(),
            /** null once the bdev has gone away under the controller. */
            bdev: z.string().nullable(),
            transport: z.string().optional(),
          })
          .passthrough()
          .optional(),
      })
      .passthrough()
      .default({}),
  })
  .passthrough();
export type VhostController = z.output<typeof VhostController>;
export const VhostControllerList = z.array(VhostController);

// ---- NVMe-oF (migration of node-local disks) ----------------------------------------------

const tgtName = z.string().min(1).optional();
const nqn = z.string().regex(/^nqn\./, 'an NQN starting with "nqn."');
const trtype = z.string().min(1);
const adrfam = z.enum(['IPv4', 'IPv6', 'IB', 'FC', 'ipv4', 'ipv6', 'ib', 'fc']);

export const NvmfCreateTransportParams = z
  .object({
    trtype,
    tgt_name: tgtName,
    max_queue_depth: u32.optional(),
    max_io_qpairs_per_ctrlr: u32.optional(),
    in_capsule_data_size: u32.optional(),
    max_io_size: u32.optional(),
    io_unit_size: u32.optional(),
    max_aq_depth: u32.optional(),
    num_shared_buffers: u32.optional(),
    buf_cache_size: u32.optional(),
    dif_insert_or_strip: z.boolean().optional(),
    zcopy: z.boolean().optional(),
    abort_timeout_sec: u32.optional(),
    acceptor_poll_rate: u32.optional(),
    // TCP-specific
    c2h_success: z.boolean().optional(),
    sock_priority: u32.optional(),
    control_msg_num: u32.optional(),
  })
  .strict();
export type NvmfCreateTransportParams = z.input<typeof NvmfCreateTransportParams>;

export const NvmfCreateSubsystemParams = z
  .object({
    nqn,
    tgt_name: tgtName,
    serial_number: z.string().max(20).optional(),
    model_number: z.string().max(40).optional(),
    allow_any_host: z.boolean().optional(),
    ana_reporting: z.boolean().optional(),
    min_cntlid: z.number().int().min(1).max(0xffef).optional(),
    max_cntlid: z.number().int().min(1).max(0xffef).optional(),
    max_namespaces: u32.optional(),
    max_discard_size_kib: u32.optional(),
    max_write_zeroes_size_kib: u32.optional(),
  })
  .strict();
export type NvmfCreateSubsystemParams = z.input<typeof NvmfCreateSubsystemParams>;

export const NvmfSubsystemAddNsParams = z
  .object({
    nqn,
    tgt_name: tgtName,
    namespace: z
      .object({
        bdev_name: name,
        nsid: z.number().int().positive().optional(),
        nguid: z.string().optional(),
        eui64: z.string().optional(),
        uuid: uuid.optional(),
        ptpl_file: z.string().optional(),
        anagrpid: z.number().int().positive().optional(),
        no_auto_visible: z.boolean().optional(),
      })
      .strict(),
  })
  .strict();
export type NvmfSubsystemAddNsParams = z.input<typeof NvmfSubsystemAddNsParams>;
/** The namespace id that was assigned. */
export const Nsid = z.number().int().positive();

export const ListenAddress = z
  .object({ trtype, adrfam: adrfam.optional(), traddr: z.string().min(1), trsvcid: z.string().optional() })
  .strict();

export const NvmfSubsystemAddListenerParams = z
  .object({ nqn, tgt_name: tgtName, listen_address: ListenAddress, secure_channel: z.boolean().optional() })
  .strict();
export type NvmfSubsystemAddListenerParams = z.input<typeof NvmfSubsystemAddListenerParams>;

export const NvmfDeleteSubsystemParams = z.object({ nqn, tgt_name: tgtName }).strict();
export type NvmfDeleteSubsystemParams = z.input<typeof NvmfDeleteSubsystemParams>;

export const NvmfGetSubsystemsParams = z.object({ tgt_name: tgtName }).strict();
export type NvmfGetSubsystemsParams = z.input<typeof NvmfGetSubsystemsParams>;

export const NvmfSubsystem = z
  .object({
    nqn: z.string(),
    subtype: z.string(),
    listen_addresses: z.array(z.object({ traddr: z.string() }).passthrough()).default([]),
    allow_any_host: z.boolean().optional(),
    hosts: z.array(z.object({ nqn: z.string() }).passthrough()).default([]),
    namespaces: z
      .array(z.object({ nsid: z.number().int(), bdev_name: z.string() }).passthrough())
      .default([]),
  })
  .passthrough();
export type NvmfSubsystem = z.output<typeof NvmfSubsystem>;
export const NvmfSubsystemList = z.array(NvmfSubsystem);

export const BdevNvmeAttachControllerParams = z
  .object({
    name,
    trtype,
    traddr: z.string().min(1),
    adrfam: adrfam.optional(),
    trsvcid: z.string().optional(),
    priority: z.string().optional(),
    subnqn: nqn.optional(),
    hostnqn: nqn.optional(),
    hostaddr: z.string().optional(),
    hostsvcid: z.string().optional(),
    prchk_reftag: z.boolean().optional(),
    prchk_guard: z.boolean().optional(),
    hdgst: z.boolean().optional(),
    ddgst: z.boolean().optional(),
    fabrics_connect_timeout_us: u32.optional(),
    multipath: z.enum(['disable', 'failover', 'multipath']).optional(),
    num_io_queues: z.number().int().positive().optional(),
    ctrlr_loss_timeout_sec: z.number().int().min(-1).optional(),
    reconnect_delay_sec: u32.optional(),
    fast_io_fail_timeout_sec: u32.optional(),
    psk: z.string().optional(),
    max_bdevs: z.number().int().positive().optional(),
  })
  .strict();
export type BdevNvmeAttachControllerParams = z.input<typeof BdevNvmeAttachControllerParams>;
/** Names of the bdevs created for the controller's namespaces. */
export const AttachedBdevs = z.array(z.string());

export const NvmfSubsystemHostParams = z.object({ nqn, host: nqn, tgt_name: tgtName }).strict();
export type NvmfSubsystemHostParams = z.input<typeof NvmfSubsystemHostParams>;

export const NvmfSubsystemGetControllersParams = z.object({ nqn, tgt_name: tgtName }).strict();
/**
 * One entry per host controller connected to the subsystem (recorded on real v24.01 and v25.09,
 * test/fixtures/spdk/*-nvmf-readers-transcript.jsonl; v25.09 adds `cntrltype`).
 */
export const NvmfControllerList = z.array(
  z
    .object({
      cntlid: z.number().int(),
      hostnqn: z.string(),
      hostid: z.string().optional(),
      num_io_qpairs: z.number().int().optional(),
    })
    .passthrough(),
);
export type NvmfControllerList = z.output<typeof NvmfControllerList>;

export const BdevNvmeGetControllersParams = z.object({ name: name.optional() }).strict();
/** One NVMe bdev controller; `state` is e.g. enabled, resetting, reconnect_is_delayed, failed, deleting. */
export const NvmeBdevController = z
  .object({
    name: z.string(),
    ctrlrs: z.array(z.object({ state: z.string().optional() }).passthrough()).default([]),
  })
  .passthrough();
export const NvmeBdevControllerList = z.array(NvmeBdevController);

export const BdevNvmeDetachControllerParams = z
  .object({
    name,
    trtype: trtype.optional(),
    traddr: z.string().optional(),
    adrfam: adrfam.optional(),
    trsvcid: z.string().optional(),
    subnqn: nqn.optional(),
    hostaddr: z.string().optional(),
    hostsvcid: z.string().optional(),
  })
  .strict();
export type BdevNvmeDetachControllerParams = z.input<typeof BdevNvmeDetachControllerParams>;

// ---- the table ----------------------------------------------------------------------------

/**
 * method -> schemas, for the client side. (The simulator decodes incoming params as SPDK
 * does, more leniently, in testing/spdk-sim/params.ts.) `params: NoParams` marks methods that must
 * be sent without `params`.
 */
export const SPDK_METHODS = {
  spdk_get_version: { params: NoParams, result: SpdkVersion },
  rpc_get_methods: { params: RpcGetMethodsParams.optional(), result: z.array(z.string()) },
  framework_wait_init: { params: NoParams, result: True },
  bdev_wait_for_examine: { params: NoParams, result: True },
  bdev_get_bdevs: { params: BdevGetBdevsParams.optional(), result: BdevList },
  bdev_malloc_create: { params: BdevMallocCreateParams, result: CreatedName },
  bdev_malloc_delete: { params: BdevNameParams, result: True },
  bdev_aio_create: { params: BdevAioCreateParams, result: CreatedName },
  bdev_aio_delete: { params: BdevNameParams, result: True },
  bdev_lvol_create_lvstore: { params: BdevLvolCreateLvstoreParams, result: CreatedName },
  bdev_lvol_get_lvstores: { params: BdevLvolGetLvstoresParams.optional(), result: LvstoreList },
  bdev_lvol_create: { params: BdevLvolCreateParams, result: CreatedName },
  bdev_lvol_snapshot: { params: BdevLvolSnapshotParams, result: CreatedName },
  bdev_lvol_clone: { params: BdevLvolCloneParams, result: CreatedName },
  bdev_lvol_clone_bdev: { params: BdevLvolCloneBdevParams, result: CreatedName },
  bdev_lvol_inflate: { params: BdevNameParams, result: True },
  bdev_lvol_set_read_only: { params: BdevNameParams, result: True },
  bdev_lvol_resize: { params: BdevLvolResizeParams, result: True },
  bdev_lvol_delete: { params: BdevNameParams, result: True },
  bdev_lvol_get_lvols: { params: BdevLvolGetLvolsParams.optional(), result: LvolList },
  bdev_lvol_set_parent: { params: BdevLvolSetParentParams, result: True },
  bdev_lvol_rename: { params: BdevLvolRenameParams, result: True },
  vhost_create_blk_controller: { params: VhostCreateBlkControllerParams, result: True },
  vhost_delete_controller: { params: VhostDeleteControllerParams, result: True },
  vhost_get_controllers: { params: VhostGetControllersParams.optional(), result: VhostControllerList },
  nvmf_create_transport: { params: NvmfCreateTransportParams, result: True },
  nvmf_create_subsystem: { params: NvmfCreateSubsystemParams, result: True },
  nvmf_subsystem_add_ns: { params: NvmfSubsystemAddNsParams, result: Nsid },
  nvmf_subsystem_add_listener: { params: NvmfSubsystemAddListenerParams, result: True },
  nvmf_delete_subsystem: { params: NvmfDeleteSubsystemParams, result: True },
  nvmf_get_subsystems: { params: NvmfGetSubsystemsParams.optional(), result: NvmfSubsystemList },
  bdev_nvme_attach_controller: { params: BdevNvmeAttachControllerParams, result: AttachedBdevs },
  bdev_nvme_detach_controller: { params: BdevNvmeDetachControllerParams, result: True },
  bdev_nvme_get_controllers: { params: BdevNvmeGetControllersParams.optional(), result: NvmeBdevControllerList },
  nvmf_subsystem_get_controllers: { params: NvmfSubsystemGetControllersParams, result: NvmfControllerList },
  nvmf_subsystem_add_host: { params: NvmfSubsystemHostParams, result: True },
  nvmf_subsystem_remove_host: { params: NvmfSubsystemHostParams, result: True },
} as const satisfies Record<string, { params: z.ZodTypeAny; result: z.ZodTypeAny }>;

export type SpdkMethod = keyof typeof SPDK_METHODS;
export type SpdkParams<M extends SpdkMethod> = z.input<(typeof SPDK_METHODS)[M]['params']>;
export type SpdkResult<M extends SpdkMethod> = z.output<(typeof SPDK_METHODS)[M]['result']>;
