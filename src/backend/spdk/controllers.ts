import { hostSocketPath, socketPathProblem } from '../../contract/layout.js';
import { SpdkError } from '../../spdk/errors.js';
import type { Bdev, VhostController } from '../../spdk/schemas.js';
import { ensureSlotDir } from '../vhost-fs.js';
import { BackendError, type ControllerSpec, type ObservedController } from '../types.js';
import { servesBdev, type SpdkContext } from './context.js';
import { toBackendError } from './errors.js';
import type { LvstoreKeeper } from './lvstore.js';
import { checkControllerName } from './naming.js';
import { diskRefOf } from './observe.js';

/**
 * vhost-user-blk controllers: one per bdev (SPDK takes no claim, so the driver checks), named
 * `<slot>/<disk>` with the socket at the contract's host socket path. Calls on one controller
 * name run one at a time.
 */
export class ControllerStore {
  constructor(
    private readonly ctx: SpdkContext,
    private readonly keeper: LvstoreKeeper,
  ) {}

  ensureController(spec: ControllerSpec): Promise<ObservedController> {
    const { ctx } = this;
    const { slot } = checkControllerName(spec.name);
    const problem = socketPathProblem(ctx.vhostDir, spec.name);
    if (problem !== undefined) return Promise.reject(new BackendError(`controller ${spec.name}: ${problem}`, 'invalid'));
    return ctx.controllerLocks.run(spec.name, async () => {
      await this.keeper.ready();
      await ensureSlotDir(ctx.vhostDir, slot);
      const [controllers, bdev] = await Promise.all([ctx.listControllers(), ctx.getBdev(spec.diskRef)]);
      if (!bdev) throw new BackendError(`controller ${spec.name}: bdev ${spec.diskRef} does not exist`, 'notFound');
      const existing = controllers.find((c) => c.ctrlr === spec.name);
      if (existing) return this.verifyController(existing, bdev, spec);
      const other = controllers.find((c) => servesBdev(c, bdev));
      if (other) {
        throw new BackendError(`controller ${spec.name}: ${spec.diskRef} is already served by controller ${other.ctrlr}`, 'busy');
      }
      const cpumask = spec.cpumask ?? ctx.cfg.cpumask;
      try {
        await ctx.api.vhostCreateBlkController({
          ctrlr: spec.name,
          dev_name: spec.diskRef,
          ...(cpumask !== undefined ? { cpumask } : {}),
          ...(spec.readonly ? { readonly: true } : {}),
        });
      } catch (e) {
        if (!(e instanceof SpdkError && e.kind === 'exists')) throw toBackendError(e, `controller ${spec.name}`);
        const again = (await ctx.api.vhostGetControllers({ name: spec.name }))[0];
        if (!again) throw toBackendError(e, `controller ${spec.name}`);
        return this.verifyController(again, bdev, spec);
      }
      ctx.log.info({ event: 'controller.created', ctrlr: spec.name, bdev: spec.diskRef, readonly: spec.readonly }, 'controller created');
      return { name: spec.name, diskRef: spec.diskRef, readonly: spec.readonly, socketPath: hostSocketPath(ctx.vhostDir, spec.name), sessions: 0 };
    });
  }

  deleteController(name: string): Promise<void> {
    const { ctx } = this;
    checkControllerName(name);
    return ctx.controllerLocks.run(name, async () => {
      try {
        await ctx.api.vhostDeleteController({ ctrlr: name });
        ctx.log.info({ event: 'controller.deleted', ctrlr: name }, 'controller deleted');
      } catch (e) {
        if (e instanceof SpdkError && e.kind === 'notFound') return;
        throw toBackendError(e, `deleting controller ${name}`);
      }
    });
  }

  /** The controller serving `bdev`, if any (a remote disk is not detached under one). */
  async servingController(bdev: Bdev): Promise<string | undefined> {
    return (await this.ctx.listControllers()).find((c) => servesBdev(c, bdev))?.ctrlr;
  }

  private verifyController(c: VhostController, bdev: Bdev, spec: ControllerSpec): ObservedController {
    const readonly = c.backend_specific.block?.readonly ?? false;
    if (!servesBdev(c, bdev)) {
      const served = c.backend_specific.block?.bdev ?? 'nothing';
      throw new BackendError(`controller ${spec.name} exists but serves ${served}, not ${spec.diskRef}`, 'busy');
    }
    if (readonly !== spec.readonly) {
      throw new BackendError(`controller ${spec.name} exists with readonly=${readonly}, wanted readonly=${spec.readonly}`, 'busy');
    }
    return {
      name: c.ctrlr,
      diskRef: diskRefOf(bdev, this.ctx.lvs),
      readonly,
      socketPath: c.socket || hostSocketPath(this.ctx.vhostDir, c.ctrlr),
      sessions: c.sessions.length,
    };
  }
}
