/**
 * Typed wrappers of the SPDK methods we use. Params use SPDK's own snake_case names and are
 * checked locally (strict schemas) before anything is sent; results are validated so that a
 * surprising reply fails here, naming the method and the field, instead of deep in a caller.
 */
import type { z } from 'zod';
import { SpdkError } from './errors.js';
import { LOCAL_ERROR_CODE, type CallOptions, type SpdkRpcClient } from './client.js';
import { SPDK_METHODS, type SpdkMethod, type SpdkParams, type SpdkResult } from './schemas.js';

function describeIssues(prefix: string, error: z.ZodError): string {
  return error.issues
    .map((i) => {
      const field = [prefix, ...i.path.map(String)].join('.');
      return i.code === 'unrecognized_keys' ? `${field}: unknown field(s) ${i.keys.join(', ')}` : `${field}: ${i.message}`;
    })
    .join('; ');
}

export class SpdkApi {
  constructor(readonly client: SpdkRpcClient) {}

  /** Validate params, call, validate the result. Every wrapper below is this. */
  async invoke<M extends SpdkMethod>(method: M, params: SpdkParams<M>, opts?: CallOptions): Promise<SpdkResult<M>> {
    const spec = SPDK_METHODS[method];
    const checkedParams = spec.params.safeParse(params);
    if (!checkedParams.success) {
      throw new SpdkError(method, LOCAL_ERROR_CODE, `invalid params: ${describeIssues('params', checkedParams.error)}`, 'invalidParams', {
        local: true,
        issues: checkedParams.error.issues,
      });
    }
    const raw = await this.client.call(method, checkedParams.data as Record<string, unknown> | undefined, opts);
    const checkedResult = spec.result.safeParse(raw);
    if (!checkedResult.success) {
      throw new SpdkError(method, LOCAL_ERROR_CODE, `unexpected reply: ${describeIssues('result', checkedResult.error)}`, 'internal', {
        local: true,
        issues: checkedResult.error.issues,
      });
    }
    return checkedResult.data as SpdkResult<M>;
  }

  spdkGetVersion(opts?: CallOptions) {
    return this.invoke('spdk_get_version', undefined, opts);
  }
  rpcGetMethods(p?: SpdkParams<'rpc_get_methods'>, opts?: CallOptions) {
    return this.invoke('rpc_get_methods', p, opts);
  }
  /** Resolves once spdk_tgt's subsystems are initialised. */
  frameworkWaitInit(opts?: CallOptions) {
    return this.invoke('framework_wait_init', undefined, opts);
  }

  /** Resolves once every bdev's examine (e.g. an lvstore loading from its base) is done. */
  bdevWaitForExamine(opts?: CallOptions) {
    return this.invoke('bdev_wait_for_examine', undefined, opts);
  }
  bdevGetBdevs(p?: SpdkParams<'bdev_get_bdevs'>, opts?: CallOptions) {
    return this.invoke('bdev_get_bdevs', p, opts);
  }
  bdevMallocCreate(p: SpdkParams<'bdev_malloc_create'>, opts?: CallOptions) {
    return this.invoke('bdev_malloc_create', p, opts);
  }
  bdevMallocDelete(p: SpdkParams<'bdev_malloc_delete'>, opts?: CallOptions) {
    return this.invoke('bdev_malloc_delete', p, opts);
  }
  bdevAioCreate(p: SpdkParams<'bdev_aio_create'>, opts?: CallOptions) {
    return this.invoke('bdev_aio_create', p, opts);
  }
  bdevAioDelete(p: SpdkParams<'bdev_aio_delete'>, opts?: CallOptions) {
    return this.invoke('bdev_aio_delete', p, opts);
  }

  /** Returns the new lvstore's UUID. */
  bdevLvolCreateLvstore(p: SpdkParams<'bdev_lvol_create_lvstore'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_create_lvstore', p, opts);
  }
  bdevLvolGetLvstores(p?: SpdkParams<'bdev_lvol_get_lvstores'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_get_lvstores', p, opts);
  }
  /** Returns the new lvol's UUID (also its bdev name). */
  bdevLvolCreate(p: SpdkParams<'bdev_lvol_create'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_create', p, opts);
  }
  bdevLvolSnapshot(p: SpdkParams<'bdev_lvol_snapshot'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_snapshot', p, opts);
  }
  bdevLvolClone(p: SpdkParams<'bdev_lvol_clone'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_clone', p, opts);
  }
  bdevLvolCloneBdev(p: SpdkParams<'bdev_lvol_clone_bdev'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_clone_bdev', p, opts);
  }
  bdevLvolInflate(p: SpdkParams<'bdev_lvol_inflate'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_inflate', p, opts);
  }
  bdevLvolSetReadOnly(p: SpdkParams<'bdev_lvol_set_read_only'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_set_read_only', p, opts);
  }
  bdevLvolResize(p: SpdkParams<'bdev_lvol_resize'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_resize', p, opts);
  }
  /** SPDK deletes an lvol even while a vhost controller serves it: callers must guard. */
  bdevLvolDelete(p: SpdkParams<'bdev_lvol_delete'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_delete', p, opts);
  }
  /** v24.09+ only. */
  bdevLvolSetParent(p: SpdkParams<'bdev_lvol_set_parent'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_set_parent', p, opts);
  }
  bdevLvolRename(p: SpdkParams<'bdev_lvol_rename'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_rename', p, opts);
  }
  bdevLvolGetLvols(p?: SpdkParams<'bdev_lvol_get_lvols'>, opts?: CallOptions) {
    return this.invoke('bdev_lvol_get_lvols', p, opts);
  }

  /** SPDK takes no claim on the bdev: one controller per bdev is the caller's rule. */
  vhostCreateBlkController(p: SpdkParams<'vhost_create_blk_controller'>, opts?: CallOptions) {
    return this.invoke('vhost_create_blk_controller', p, opts);
  }
  vhostDeleteController(p: SpdkParams<'vhost_delete_controller'>, opts?: CallOptions) {
    return this.invoke('vhost_delete_controller', p, opts);
  }
  vhostGetControllers(p?: SpdkParams<'vhost_get_controllers'>, opts?: CallOptions) {
    return this.invoke('vhost_get_controllers', p, opts);
  }

  nvmfCreateTransport(p: SpdkParams<'nvmf_create_transport'>, opts?: CallOptions) {
    return this.invoke('nvmf_create_transport', p, opts);
  }
  nvmfCreateSubsystem(p: SpdkParams<'nvmf_create_subsystem'>, opts?: CallOptions) {
    return this.invoke('nvmf_create_subsystem', p, opts);
  }
  /** Returns the namespace id. */
  nvmfSubsystemAddNs(p: SpdkParams<'nvmf_subsystem_add_ns'>, opts?: CallOptions) {
    return this.invoke('nvmf_subsystem_add_ns', p, opts);
  }
  nvmfSubsystemAddListener(p: SpdkParams<'nvmf_subsystem_add_listener'>, opts?: CallOptions) {
    return this.invoke('nvmf_subsystem_add_listener', p, opts);
  }
  nvmfDeleteSubsystem(p: SpdkParams<'nvmf_delete_subsystem'>, opts?: CallOptions) {
    return this.invoke('nvmf_delete_subsystem', p, opts);
  }
  nvmfGetSubsystems(p?: SpdkParams<'nvmf_get_subsystems'>, opts?: CallOptions) {
    return this.invoke('nvmf_get_subsystems', p, opts);
  }
  /** Returns the names of the bdevs created for the remote namespaces. */
  bdevNvmeAttachController(p: SpdkParams<'bdev_nvme_attach_controller'>, opts?: CallOptions) {
    return this.invoke('bdev_nvme_attach_controller', p, opts);
  }
  bdevNvmeDetachController(p: SpdkParams<'bdev_nvme_detach_controller'>, opts?: CallOptions) {
    return this.invoke('bdev_nvme_detach_controller', p, opts);
  }
  bdevNvmeGetControllers(p?: SpdkParams<'bdev_nvme_get_controllers'>, opts?: CallOptions) {
    return this.invoke('bdev_nvme_get_controllers', p, opts);
  }
  nvmfSubsystemGetControllers(p: SpdkParams<'nvmf_subsystem_get_controllers'>, opts?: CallOptions) {
    return this.invoke('nvmf_subsystem_get_controllers', p, opts);
  }
  nvmfSubsystemAddHost(p: SpdkParams<'nvmf_subsystem_add_host'>, opts?: CallOptions) {
    return this.invoke('nvmf_subsystem_add_host', p, opts);
  }
  nvmfSubsystemRemoveHost(p: SpdkParams<'nvmf_subsystem_remove_host'>, opts?: CallOptions) {
    return this.invoke('nvmf_subsystem_remove_host', p, opts);
  }
}
