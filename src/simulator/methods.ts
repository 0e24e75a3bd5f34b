import type { ZodType, ZodTypeDef } from 'zod';
import { RpcError, JSONRPC_INTERNAL_ERROR, invalidParams, rawErrno } from './errors.js';
import type { Json, SessionInfo, SpdkModel } from './model.js';
import { schemas } from './params.js';
import type * as P from './params.js';
import type { VhostController } from './state.js';

/** The I/O a method may need besides the model. */
export interface MethodContext {
  model: SpdkModel;
  bindVhostSocket(c: VhostController): Promise<void>;
  closeVhostSocket(c: VhostController): Promise<void>;
  sessionsOf(c: VhostController): SessionInfo[];
  /** Resolves when `check` passes or the time is up (false). */
  waitFor(check: () => boolean, timeoutMs: number): Promise<boolean>;
}

/**
 * How SPDK treats `params`: `none` methods reject any params object with -32602 "<method>
 * method requires no parameters"; `required` methods fail to decode a missing one; `optional`
 * methods accept its absence.
 */
export type MethodDef =
  | { params: 'none'; run(ctx: MethodContext): Json | Promise<Json> }
  | { params: 'required' | 'optional'; schema: ZodType<unknown, ZodTypeDef, unknown>; run(ctx: MethodContext, p: never): Json | Promise<Json> };

function req<T>(schema: ZodType<T, ZodTypeDef, unknown>, run: (ctx: MethodContext, p: T) => Json | Promise<Json>): MethodDef {
  return { params: 'required', schema, run: run as (ctx: MethodContext, p: never) => Json };
}
function opt<T>(schema: ZodType<T, ZodTypeDef, unknown>, run: (ctx: MethodContext, p: T | undefined) => Json | Promise<Json>): MethodDef {
  return { params: 'optional', schema, run: run as (ctx: MethodContext, p: never) => Json };
}
function none(run: (ctx: MethodContext) => Json | Promise<Json>): MethodDef {
  return { params: 'none', run };
}

async function getBdevs(ctx: MethodContext, p: P.GetBdevs | undefined): Promise<Json> {
  const name = p?.name;
  const timeout = p?.timeout ?? 0;
  if (name === undefined || name === '' || timeout === 0 || ctx.model.resolveBdev(name)) return ctx.model.getBdevs(name);
  // With a timeout, SPDK waits for the bdev to appear and reports ETIMEDOUT otherwise.
  const found = await ctx.waitFor(() => ctx.model.resolveBdev(name) !== undefined, timeout);
  if (!found) throw rawErrno('ETIMEDOUT');
  return ctx.model.getBdevs(name);
}

async function createVhostBlk(ctx: MethodContext, p: P.VhostCreateBlk): Promise<Json> {
  const c = ctx.model.prepareVhostController(p);
  await ctx.bindVhostSocket(c);
  // Another connection may have created the same controller while the socket was bound.
  if (ctx.model.controllers.has(c.name)) {
    await ctx.closeVhostSocket(c);
    throw invalidParams('EEXIST');
  }
  return ctx.model.addVhostController(c);
}

async function deleteVhost(ctx: MethodContext, p: P.VhostDelete): Promise<Json> {
  const c = ctx.model.removeVhostController(p);
  await ctx.closeVhostSocket(c);
  return true;
}

export const METHODS: Record<string, MethodDef> = {
  spdk_get_version: none((ctx) => ctx.model.version()),
  framework_wait_init: none(() => true),
  rpc_get_methods: opt(schemas.rpcGetMethods, () => Object.keys(METHODS)),

  bdev_get_bdevs: opt(schemas.getBdevs, getBdevs),
  bdev_malloc_create: req(schemas.mallocCreate, (ctx, p) => ctx.model.mallocCreate(p)),
  bdev_malloc_delete: req(schemas.nameOnly, (ctx, p) => ctx.model.mallocDelete(p)),
  bdev_aio_create: req(schemas.aioCreate, (ctx, p) => ctx.model.aioCreate(p)),
  bdev_aio_delete: req(schemas.nameOnly, (ctx, p) => ctx.model.aioDelete(p)),

  bdev_lvol_create_lvstore: req(schemas.lvsCreate, (ctx, p) => ctx.model.lvsCreate(p)),
  bdev_lvol_delete_lvstore: req(schemas.lvsSelect, (ctx, p) => ctx.model.lvsDelete(p)),
  bdev_lvol_rename_lvstore: req(schemas.renameLvs, (ctx, p) => ctx.model.lvsRename(p)),
  bdev_lvol_get_lvstores: opt(schemas.lvsSelect, (ctx, p) => ctx.model.getLvstores(p)),
  bdev_lvol_create: req(schemas.lvolCreate, (ctx, p) => ctx.model.lvolCreate(p)),
  bdev_lvol_snapshot: req(schemas.lvolSnapshot, (ctx, p) => ctx.model.lvolSnapshot(p)),
  bdev_lvol_clone: req(schemas.lvolClone, (ctx, p) => ctx.model.lvolClone(p)),
  bdev_lvol_clone_bdev: req(schemas.lvolCloneBdev, (ctx, p) => ctx.model.lvolCloneBdev(p)),
  bdev_lvol_resize: req(schemas.lvolResize, (ctx, p) => ctx.model.lvolResize(p)),
  bdev_lvol_inflate: req(schemas.nameOnly, (ctx, p) => ctx.model.lvolInflate(p)),
  bdev_lvol_decouple_parent: req(schemas.nameOnly, (ctx, p) => ctx.model.lvolDecoupleParent(p)),
  bdev_lvol_set_read_only: req(schemas.nameOnly, (ctx, p) => ctx.model.lvolSetReadOnly(p)),
  bdev_lvol_rename: req(schemas.renameLvol, (ctx, p) => ctx.model.lvolRename(p)),
  bdev_lvol_delete: req(schemas.lvolDelete, (ctx, p) => ctx.model.lvolDelete(p)),
  bdev_lvol_get_lvols: opt(schemas.getLvols, (ctx, p) => ctx.model.getLvols(p)),

  vhost_create_blk_controller: req(schemas.vhostCreateBlk, createVhostBlk),
  vhost_delete_controller: req(schemas.vhostDelete, deleteVhost),
  vhost_get_controllers: opt(schemas.vhostGet, (ctx, p) => ctx.model.getVhostControllers(p, (c) => ctx.sessionsOf(c))),

  bdev_ocf_create: req(schemas.ocfCreate, (ctx, p) => ctx.model.ocfCreate(p)),
  bdev_ocf_delete: req(schemas.nameOnly, (ctx, p) => ctx.model.ocfDelete(p)),
  bdev_ocf_get_bdevs: opt(schemas.optionalName, (ctx, p) => ctx.model.ocfGet(p)),

  nvmf_create_transport: req(schemas.nvmfCreateTransport, (ctx, p) => ctx.model.nvmfCreateTransport(p)),
  nvmf_get_transports: opt(schemas.nvmfGetTransports, (ctx, p) => ctx.model.nvmfGetTransports(p)),
  nvmf_create_subsystem: req(schemas.nvmfCreateSubsystem, (ctx, p) => ctx.model.nvmfCreateSubsystem(p)),
  nvmf_delete_subsystem: req(schemas.nqnOnly, (ctx, p) => ctx.model.nvmfDeleteSubsystem(p)),
  nvmf_subsystem_add_listener: req(schemas.nvmfListener, (ctx, p) => ctx.model.nvmfAddListener(p)),
  nvmf_subsystem_remove_listener: req(schemas.nvmfListener, (ctx, p) => ctx.model.nvmfRemoveListener(p)),
  nvmf_subsystem_add_ns: req(schemas.nvmfAddNs, (ctx, p) => ctx.model.nvmfAddNamespace(p)),
  nvmf_subsystem_remove_ns: req(schemas.nvmfRemoveNs, (ctx, p) => ctx.model.nvmfRemoveNamespace(p)),
  nvmf_subsystem_add_host: req(schemas.nvmfHost, (ctx, p) => ctx.model.nvmfHost(p, true)),
  nvmf_subsystem_remove_host: req(schemas.nvmfHost, (ctx, p) => ctx.model.nvmfHost(p, false)),
  nvmf_subsystem_allow_any_host: req(schemas.nvmfAllowAnyHost, (ctx, p) => ctx.model.nvmfAllowAnyHost(p)),
  nvmf_get_subsystems: opt(schemas.nvmfGetSubsystems, (ctx, p) => ctx.model.nvmfGetSubsystems(p)),

  bdev_nvme_attach_controller: req(schemas.nvmeAttach, (ctx, p) => ctx.model.nvmeAttach(p)),
  bdev_nvme_detach_controller: req(schemas.nvmeDetach, (ctx, p) => ctx.model.nvmeDetach(p)),
  bdev_nvme_get_controllers: opt(schemas.optionalName, (ctx, p) => ctx.model.nvmeGetControllers(p)),
};

const DECODE_FAILED = new RpcError(JSONRPC_INTERNAL_ERROR, 'spdk_json_decode_object failed');

/** Decode `params` as SPDK would for `def`; throws the RpcError SPDK sends on failure. */
export function decodeParams(method: string, def: MethodDef, params: unknown): unknown {
  if (def.params === 'none') {
    if (params !== undefined) throw new RpcError(-32602, `${method} method requires no parameters`);
    return undefined;
  }
  if (params === undefined) {
    if (def.params === 'required') throw DECODE_FAILED;
    return undefined;
  }
  if (params === null || typeof params !== 'object' || Array.isArray(params)) throw DECODE_FAILED;
  const parsed = def.schema.safeParse(params);
  if (!parsed.success) throw DECODE_FAILED;
  return parsed.data;
}
