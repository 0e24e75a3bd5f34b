import { randomBytes } from 'node:crypto';
import type { Logger } from '../../log.js';
import { SpdkError } from '../../spdk/errors.js';
import type { SpdkContext } from './context.js';
import { toBackendError } from './errors.js';
import { INSTANCE_BDEV_PREFIX, instanceBdevName, isInstanceBdev } from './naming.js';

/**
 * Names the spdk_tgt process (health().instance): a one-block malloc bdev with a random name,
 * made when the connected target has none. A malloc bdev lives in the process's memory only
 * (no config file, no metadata on disk), so a new spdk_tgt has none and gets a new id, while
 * an RPC connection that drops and comes back to the same process finds the same one. spdk_tgt
 * reports nothing per-process of its own (no pid; in a container even a pid repeats).
 * The bdev is no disk, image or lvstore base: observe never lists it (not an lvol) and a
 * `bdev:` disk may not name it (disks.ts).
 */
export class InstanceMarker {
  private known: string | undefined;
  private pending: Promise<string> | undefined;

  constructor(
    private readonly ctx: SpdkContext,
    private readonly log: Logger,
  ) {}

  /** The connected process's id; concurrent callers share one look-up. */
  current(): Promise<string> {
    this.pending ??= this.resolve().finally(() => {
      this.pending = undefined;
    });
    return this.pending;
  }

  private async resolve(): Promise<string> {
    // Cheap path: the marker seen last is still there (the same process).
    if (this.known !== undefined && (await this.ctx.getBdev(instanceBdevName(this.known)))) return this.known;
    const found = await this.find();
    if (found !== undefined) return this.remember(found);
    const id = randomBytes(8).toString('hex');
    try {
      await this.ctx.api.bdevMallocCreate({ name: instanceBdevName(id), num_blocks: 1, block_size: 512 });
    } catch (e) {
      // Another caller on the same target made one meanwhile: use that one.
      const other = e instanceof SpdkError && e.kind === 'exists' ? await this.find() : undefined;
      if (other === undefined) throw toBackendError(e, 'creating the instance marker bdev');
      return this.remember(other);
    }
    this.log.info({ event: 'backend.instance', instance: id }, 'marked this spdk_tgt process');
    return this.remember(id);
  }

  /** The lowest marker name, so that every caller picks the same one if several exist. */
  private async find(): Promise<string | undefined> {
    const names = (await this.ctx.listBdevs()).map((b) => b.name).filter(isInstanceBdev).sort();
    return names[0]?.slice(INSTANCE_BDEV_PREFIX.length);
  }

  private remember(id: string): string {
    if (this.known !== undefined && this.known !== id) this.log.info({ event: 'backend.instance-changed', before: this.known, now: id }, 'spdk_tgt is a new process');
    this.known = id;
    return id;
  }
}
