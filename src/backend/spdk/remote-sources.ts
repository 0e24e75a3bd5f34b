import type { Logger } from '../../log.js';
import { SpdkError } from '../../spdk/errors.js';
import type { Bdev } from '../../spdk/schemas.js';
import { hostNqnOf, type RemoteDiskRef } from '../remote.js';
import { BackendError } from '../types.js';
import type { SpdkContext } from './context.js';
import { toBackendError } from './errors.js';
import { nvmeBdevOf } from './naming.js';
import { bdevSizeBytes } from './schemas.js';

/**
 * Another node's export attached as an NVMe bdev controller (a lazy golden's peer, a lazy
 * disk's source), and the checks that make it fit to back a clone. Attaches use
 * `ctrlr_loss_timeout_sec: -1`: a source that restarts pauses reads and hydration (the
 * controller reconnects every few seconds) instead of failing them.
 */

const RECONNECT_DELAY_SEC = 2;
const CONNECT_TIMEOUT_US = 10_000_000;

/** A controller with several paths (a switched source) is usable while any of them is. */
export const pathState = (ctrlrs: ReadonlyArray<{ state?: string | undefined }> | undefined): string | undefined =>
  ctrlrs?.some((c) => c.state === 'enabled') ? 'enabled' : ctrlrs?.[0]?.state;

/** An export spdk can read: NVMe-oF/TCP. */
export type NvmfRef = Extract<RemoteDiskRef, { transport: 'nvmf-tcp' }>;

export const isNotFound = (e: unknown): boolean => e instanceof SpdkError && e.kind === 'notFound';

/** -114: the controller (or this path of it) exists already. */
const isAttached = (e: unknown): boolean => e instanceof SpdkError && (e.code === -114 || e.kind === 'exists');

export class RemoteSources {
  constructor(private readonly ctx: SpdkContext) {}

  private attachController(controller: string, ref: NvmfRef): Promise<unknown> {
    const nodeName = this.ctx.cfg.nodeName;
    return this.ctx.api.bdevNvmeAttachController({
      name: controller,
      trtype: 'TCP',
      adrfam: ref.adrfam === 'ipv6' ? 'IPv6' : 'IPv4',
      traddr: ref.host,
      trsvcid: String(ref.port),
      subnqn: ref.subnqn,
      ...(nodeName !== undefined ? { hostnqn: hostNqnOf(nodeName) } : {}),
      ctrlr_loss_timeout_sec: -1,
      reconnect_delay_sec: RECONNECT_DELAY_SEC,
      // SPDK's default CONNECT deadline (0.5 s) is missed by a busy peer; an I/O qpair torn
      // down mid-CONNECT then crashed real v25.09 (heap corruption) during the first examine.
      fabrics_connect_timeout_us: CONNECT_TIMEOUT_US,
    });
  }

  /** Attaches `ref` as NVMe controller `controller` (idempotent); resolves with its namespace's bdev. */
  async attach(controller: string, ref: RemoteDiskRef, what: string): Promise<Bdev> {
    const { ctx } = this;
    if (ref.transport !== 'nvmf-tcp') throw new BackendError(`${what}: spdk reads NVMe-oF/TCP exports only, not ${ref.transport}`, 'invalid');
    const bdevName = nvmeBdevOf(controller);
    let bdev = await ctx.getBdev(bdevName);
    if (!bdev) {
      try {
        await this.attachController(controller, ref);
      } catch (e) {
        // Exists (reconnecting, or a concurrent attach): its bdev decides.
        if (!isAttached(e)) {
          const err = toBackendError(e, `${what}: attaching ${ref.subnqn} at ${ref.host}:${ref.port}`);
          throw new BackendError(`${err.message} (source unreachable)`, err.kind === 'invalid' || err.kind === 'internal' || err.kind === 'notFound' ? 'transport' : err.kind, { cause: e });
        }
      }
      await ctx.api.bdevWaitForExamine().catch(() => undefined);
      bdev = await ctx.getBdev(bdevName);
      if (!bdev) throw new BackendError(`${what}: ${ref.subnqn} at ${ref.host}:${ref.port} is attached but has no namespace 1 yet (source unreachable?)`, 'transport');
      ctx.log.info({ event: 'lazy.source.attached', controller, nqn: ref.subnqn, bdev: bdev.name }, 'lazy source attached');
    }
    const size = bdevSizeBytes(bdev);
    if (ref.sizeBytes > 0 && size !== ref.sizeBytes) throw new BackendError(`${what}: the source is ${size} bytes, its reference says ${ref.sizeBytes}`, 'invalid');
    if (size % ctx.lvstore.clusterBytes !== 0) {
      throw new BackendError(`${what}: the source (${size} bytes) is not whole ${ctx.lvstore.clusterBytes}-byte clusters; it cannot back a clone`, 'invalid');
    }
    return bdev;
  }

  /**
   * Adds `ref` as another path of the attached controller `controller` (the same subsystem NQN
   * and namespace id, which SPDK checks). No `multipath` mode: each version's default is what
   * the first path was attached with. Idempotent.
   */
  async addPath(controller: string, ref: NvmfRef, what: string): Promise<void> {
    try {
      await this.attachController(controller, ref);
    } catch (e) {
      if (!isAttached(e)) {
        const err = toBackendError(e, `${what}: adding ${ref.subnqn} at ${ref.host}:${ref.port} as a path`);
        throw new BackendError(err.message, err.kind === 'invalid' ? 'invalid' : 'transport', { cause: e });
      }
    }
  }

  /** Whether the source controller is connected; a reconnecting one means 'paused'. */
  async state(controller: string): Promise<string | undefined> {
    try {
      const [c] = await this.ctx.api.bdevNvmeGetControllers({ name: controller });
      return pathState(c?.ctrlrs);
    } catch {
      return undefined;
    }
  }

  async detach(controller: string, log: Logger): Promise<void> {
    try {
      await this.ctx.api.bdevNvmeDetachController({ name: controller });
      log.info({ event: 'lazy.source.detached', controller }, 'lazy source detached');
    } catch (e) {
      if (isNotFound(e)) return;
      // -110: a thread still holds an I/O channel to it (v24.01's in-place inflate with VMs
      // running): SPDK finishes the detach by itself once they stop. Nothing reads through it.
      log.warn({ event: 'lazy.source.detach_pending', controller, err: String(e) }, 'source detach pending until readers stop');
    }
  }
}
