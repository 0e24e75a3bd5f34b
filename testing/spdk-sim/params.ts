import { z } from 'zod';

/**
 * Parameter decoders of the simulated methods, as SPDK's spdk_json_decode_object applies
 * them: a required field missing, a field of the wrong JSON type or a field the method does
 * not know fails the whole decode ("spdk_json_decode_object failed", -32603). Methods that
 * SPDK decodes with spdk_json_decode_object_relaxed use `.passthrough()`.
 */
const u32 = z.number().int().min(0).max(0xffffffff);
const u64 = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const i32 = z.number().int().min(-0x80000000).max(0x7fffffff);
const str = z.string();
const bool = z.boolean();

export const schemas = {
  nameOnly: z.object({ name: str }).strict(),
  optionalName: z.object({ name: str.optional() }).strict(),
  getBdevs: z.object({ name: str.optional(), timeout: u32.optional() }).strict(),
  mallocCreate: z
    .object({
      name: str.optional(),
      num_blocks: u64,
      block_size: u32,
      physical_block_size: u32.optional(),
      uuid: z.string().uuid().optional(),
      optimal_io_boundary: u32.optional(),
      md_size: u32.optional(),
      md_interleave: bool.optional(),
      dif_type: u32.optional(),
      dif_is_head_of_md: bool.optional(),
    })
    .strict(),
  aioCreate: z
    // `uuid` from v24.09 on; the model refuses it when answering as v24.01.
    .object({ name: str, filename: str, block_size: u32.optional(), readonly: bool.optional(), fallocate: bool.optional(), uuid: z.string().uuid().optional() })
    .strict(),
  lvsCreate: z
    .object({
      bdev_name: str,
      lvs_name: str,
      cluster_sz: u32.optional(),
      clear_method: str.optional(),
      num_md_pages_per_cluster_ratio: u32.optional(),
    })
    .strict(),
  lvsSelect: z.object({ uuid: str.optional(), lvs_name: str.optional() }).strict(),
  renameLvs: z.object({ old_name: str, new_name: str }).strict(),
  lvolCreate: z
    .object({
      uuid: str.optional(),
      lvs_name: str.optional(),
      lvol_name: str,
      size_in_mib: u64,
      thin_provision: bool.optional(),
      clear_method: str.optional(),
    })
    .strict(),
  lvolSnapshot: z.object({ lvol_name: str, snapshot_name: str }).strict(),
  lvolClone: z.object({ snapshot_name: str, clone_name: str.optional() }).strict(),
  lvolCloneBdev: z.object({ bdev: str, lvs_name: str, clone_name: str }).strict(),
  lvolResize: z.object({ name: str, size_in_mib: u64 }).strict(),
  renameLvol: z.object({ old_name: str, new_name: str }).strict(),
  lvolDelete: z.object({ name: str }).strict(),
  lvolSetParent: z.object({ lvol_name: str, parent_name: str }).strict(),
  getLvols: z.object({ lvs_uuid: str.optional(), lvs_name: str.optional() }).strict(),
  // vhost_create_blk_controller decodes its common fields relaxed and the transport's
  // (readonly, packed_ring, ...) separately, so other fields pass.
  vhostCreateBlk: z
    .object({
      ctrlr: str,
      dev_name: str,
      cpumask: str.optional(),
      transport: str.optional(),
      readonly: bool.optional(),
      packed_ring: bool.optional(),
      packed_ring_recovery: bool.optional(),
    })
    .passthrough(),
  vhostDelete: z.object({ ctrlr: str }).strict(),
  vhostGet: z.object({ name: str.optional() }).strict(),
  ocfCreate: z
    .object({ name: str, mode: str, cache_line_size: u64.optional(), cache_bdev_name: str, core_bdev_name: str })
    .strict(),
  nvmfCreateTransport: z.object({ trtype: str, tgt_name: str.optional() }).passthrough(),
  nvmfGetTransports: z.object({ trtype: str.optional(), tgt_name: str.optional() }).strict(),
  nvmfCreateSubsystem: z
    .object({
      nqn: str,
      serial_number: str.optional(),
      model_number: str.optional(),
      allow_any_host: bool.optional(),
      max_namespaces: u32.optional(),
      ana_reporting: bool.optional(),
      min_cntlid: u32.optional(),
      max_cntlid: u32.optional(),
      max_discard_size_kib: u64.optional(),
      max_write_zeroes_size_kib: u64.optional(),
      tgt_name: str.optional(),
    })
    .strict(),
  nqnOnly: z.object({ nqn: str, tgt_name: str.optional() }).strict(),
  nvmfListener: z
    .object({
      nqn: str,
      listen_address: z
        .object({ trtype: str, adrfam: str.optional(), traddr: str, trsvcid: str.optional() })
        .strict(),
      tgt_name: str.optional(),
      secure_channel: bool.optional(),
      ana_state: str.optional(),
    })
    .strict(),
  nvmfAddNs: z
    .object({
      nqn: str,
      namespace: z
        .object({
          bdev_name: str,
          nsid: u32.optional(),
          uuid: str.optional(),
          nguid: str.optional(),
          eui64: str.optional(),
          ptpl_file: str.optional(),
          anagrpid: u32.optional(),
          no_auto_visible: bool.optional(),
        })
        .strict(),
      tgt_name: str.optional(),
    })
    .strict(),
  nvmfRemoveNs: z.object({ nqn: str, nsid: u32, tgt_name: str.optional() }).strict(),
  nvmfHost: z.object({ nqn: str, host: str, tgt_name: str.optional(), psk: str.optional() }).strict(),
  nvmfAllowAnyHost: z.object({ nqn: str, allow_any_host: bool, tgt_name: str.optional() }).strict(),
  nvmfGetSubsystems: z.object({ nqn: str.optional(), tgt_name: str.optional() }).strict(),
  nvmeAttach: z
    .object({
      name: str,
      trtype: str,
      traddr: str,
      adrfam: str.optional(),
      trsvcid: str.optional(),
      subnqn: str.optional(),
      hostnqn: str.optional(),
      hostaddr: str.optional(),
      hostsvcid: str.optional(),
      priority: str.optional(),
      prchk_reftag: bool.optional(),
      prchk_guard: bool.optional(),
      hdgst: bool.optional(),
      ddgst: bool.optional(),
      fabrics_connect_timeout_us: u64.optional(),
      multipath: str.optional(),
      num_io_queues: u32.optional(),
      ctrlr_loss_timeout_sec: i32.optional(),
      reconnect_delay_sec: u32.optional(),
      fast_io_fail_timeout_sec: u32.optional(),
      psk: str.optional(),
      max_bdevs: u32.optional(),
    })
    .strict(),
  nvmeDetach: z
    .object({
      name: str,
      trtype: str.optional(),
      traddr: str.optional(),
      adrfam: str.optional(),
      trsvcid: str.optional(),
      subnqn: str.optional(),
      hostaddr: str.optional(),
      hostsvcid: str.optional(),
    })
    .strict(),
  // framework_wait_init takes no parameters but accepts an (empty) object, as real v24.01 does.
  empty: z.object({}).strict(),
  rpcGetMethods: z.object({ current: bool.optional(), include_aliases: bool.optional() }).strict(),
};

export type NameOnly = z.infer<typeof schemas.nameOnly>;
export type OptionalName = z.infer<typeof schemas.optionalName>;
export type GetBdevs = z.infer<typeof schemas.getBdevs>;
export type MallocCreate = z.infer<typeof schemas.mallocCreate>;
export type AioCreate = z.infer<typeof schemas.aioCreate>;
export type LvsCreate = z.infer<typeof schemas.lvsCreate>;
export type LvsSelect = z.infer<typeof schemas.lvsSelect>;
export type RenameLvs = z.infer<typeof schemas.renameLvs>;
export type LvolCreate = z.infer<typeof schemas.lvolCreate>;
export type LvolSnapshot = z.infer<typeof schemas.lvolSnapshot>;
export type LvolClone = z.infer<typeof schemas.lvolClone>;
export type LvolCloneBdev = z.infer<typeof schemas.lvolCloneBdev>;
export type LvolResize = z.infer<typeof schemas.lvolResize>;
export type RenameLvol = z.infer<typeof schemas.renameLvol>;
export type LvolDelete = z.infer<typeof schemas.lvolDelete>;
export type LvolSetParent = z.infer<typeof schemas.lvolSetParent>;
export type LvolSetParentBdev = LvolSetParent;
export type GetLvols = z.infer<typeof schemas.getLvols>;
export type VhostCreateBlk = z.infer<typeof schemas.vhostCreateBlk>;
export type VhostDelete = z.infer<typeof schemas.vhostDelete>;
export type VhostGet = z.infer<typeof schemas.vhostGet>;
export type OcfCreate = z.infer<typeof schemas.ocfCreate>;
export type NvmfCreateTransport = z.infer<typeof schemas.nvmfCreateTransport>;
export type NvmfGetTransports = z.infer<typeof schemas.nvmfGetTransports>;
export type NvmfCreateSubsystem = z.infer<typeof schemas.nvmfCreateSubsystem>;
export type NqnOnly = z.infer<typeof schemas.nqnOnly>;
export type NvmfListener = z.infer<typeof schemas.nvmfListener>;
export type NvmfAddNs = z.infer<typeof schemas.nvmfAddNs>;
export type NvmfRemoveNs = z.infer<typeof schemas.nvmfRemoveNs>;
export type NvmfHost = z.infer<typeof schemas.nvmfHost>;
export type NvmfAllowAnyHost = z.infer<typeof schemas.nvmfAllowAnyHost>;
export type NvmfGetSubsystems = z.infer<typeof schemas.nvmfGetSubsystems>;
export type NvmeAttach = z.infer<typeof schemas.nvmeAttach>;
export type NvmeDetach = z.infer<typeof schemas.nvmeDetach>;
export type RpcGetMethods = z.infer<typeof schemas.rpcGetMethods>;
