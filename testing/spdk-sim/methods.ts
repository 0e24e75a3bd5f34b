import type { ZodType, ZodTypeDef } from 'zod';
import { RpcError, JSONRPC_INTERNAL_ERROR, invalidParams, rawErrno } from './errors.js';
import type { Json, Pending, SessionInfo, SpdkModel } from './model.js';
import { schemas } from './params.js';
import type * as P from './params.js';
import type { VhostController } from './state.js';
import type { VersionProfile } from './version.js';

/** The I/O a method may need besides the model. */
export interface MethodContext {
  model: SpdkModel;
  bindVhostSocket(c: VhostController): Promise<void>;
  closeVhostSocket(c: VhostController): Promise<void>;
  sessionsOf(c: VhostController): SessionInfo[];
  /** Resolves when `check` passes or the time is up (false). */
  waitFor(check: () => boolean, timeoutMs: number): Promise<boolean>;
}

type Result = Json | Pending | Promise<Json | Pending>;
/** Which releases have a method (default: all the simulator imitates). */
type Availability = (p: VersionProfile) => boolean;

/**
 * How SPDK treats `params`: `none` methods reject any params object with -32602 "<method>
 * method requires no parameters"; `required` methods fail to decode a missing one; `optional`
 * methods accept its absence.
 */
export type MethodDef = (
  | { params: 'none'; run(ctx: MethodContext): Result }
  | { params: 'required' | 'optional'; schema: ZodType<unknown, ZodTypeDef, unknown>; run(ctx: MethodContext, p: never): Result }
) & { available?: Availability };

function req<T>(schema: ZodType<T, ZodTypeDef, unknown>, run: (ctx: MethodContext, p: T) => Result, available?: Availability): MethodDef {
  return { params: 'required', schema, run: run as (ctx: MethodContext, p: never) => Result, ...(available ? { available } : {}) };
}
function opt<T>(schema: ZodType<T, ZodTypeDef, unknown>, run: (ctx: MethodContext, p: T | undefined) => Result, available?: Availability): MethodDef {
  return { params: 'optional', schema, run: run as (ctx: MethodContext, p: never) => Result, ...(available ? { available } : {}) };
}
function none(run: (ctx: MethodContext) => Result): MethodDef {
  return { params: 'none', run };
}

const ocf: Availability = (p) => p.ocf;
const reparent: Availability = (p) => p.lvolReparent;

/** The methods `profile` has, in registration order (what rpc_get_methods lists). */
export function methodsOf(profile: VersionProfile): string[] {
  return Object.entries(METHODS)
    .filter(([, d]) => d.available?.(profile) ?? true)
    .map(([name]) => name);
}

/** The definition of `method` if the release answering has it. */
export function methodFor(method: string, profile: VersionProfile): MethodDef | undefined {
  const def = Object.hasOwn(METHODS, method) ? METHODS[method] : undefined;
  return def && (def.available?.(profile) ?? true) ? def : undefined;
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
  // Real v24.01 accepts `params: {}` here (it answers true), unlike spdk_get_version.
  framework_wait_init: opt(schemas.empty, () => true),
  rpc_get_methods: opt(schemas.rpcGetMethods, (ctx) => methodsOf(ctx.model.profile)),
  // Examine is synchronous in the model: by the time this runs, every lvstore has loaded.
  bdev_wait_for_examine: none(() => true),

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
  bdev_lvol_set_parent: req(schemas.lvolSetParent, (ctx, p) => ctx.model.lvolSetParent(p), reparent),
  bdev_lvol_set_parent_bdev: req(schemas.lvolSetParent, (ctx, p) => ctx.model.lvolSetParentBdev(p), reparent),

  vhost_create_blk_controller: req(schemas.vhostCreateBlk, createVhostBlk),
  vhost_delete_controller: req(schemas.vhostDelete, deleteVhost),
  vhost_get_controllers: opt(schemas.vhostGet, (ctx, p) => ctx.model.getVhostControllers(p, (c) => ctx.sessionsOf(c))),

  bdev_ocf_create: req(schemas.ocfCreate, (ctx, p) => ctx.model.ocfCreate(p), ocf),
  bdev_ocf_delete: req(schemas.nameOnly, (ctx, p) => ctx.model.ocfDelete(p), ocf),
  bdev_ocf_get_bdevs: opt(schemas.optionalName, (ctx, p) => ctx.model.ocfGet(p), ocf),

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
  // Without params: -32602 "Invalid parameters" (recorded), not a decode failure.
  nvmf_subsystem_get_controllers: opt(schemas.nqnOnly, (ctx, p) => ctx.model.nvmfGetControllers(p)),

  bdev_nvme_attach_controller: req(schemas.nvmeAttach, (ctx, p) => ctx.model.nvmeAttach(p)),
  bdev_nvme_detach_controller: req(schemas.nvmeDetach, (ctx, p) => ctx.model.nvmeDetach(p)),
  bdev_nvme_reset_controller: req(schemas.nameOnly, (ctx, p) => ctx.model.nvmeReset(p)),
  bdev_nvme_get_controllers: opt(schemas.optionalName, (ctx, p) => ctx.model.nvmeGetControllers(p)),
};

const NO_PARAMS_WITHOUT_METHOD = new Set(['bdev_wait_for_examine']);

const DECODE_FAILED = new RpcError(JSONRPC_INTERNAL_ERROR, 'spdk_json_decode_object failed');

/** Decode `params` as SPDK would for `def`; throws the RpcError SPDK sends on failure. */
export function decodeParams(method: string, def: MethodDef, params: unknown): unknown {
  if (def.params === 'none') {
    // Each method words it its own way (recorded: spdk_get_version vs bdev_wait_for_examine).
    if (params !== undefined) throw new RpcError(-32602, NO_PARAMS_WITHOUT_METHOD.has(method) ? `${method} requires no parameters` : `${method} method requires no parameters`);
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
