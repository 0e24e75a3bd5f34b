import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import type { Logger } from '../../log.js';
import { SpdkError } from '../../spdk/errors.js';
import type { Bdev } from '../../spdk/schemas.js';
import { BackendError } from '../types.js';
import type { SpdkContext } from './context.js';
import { toBackendError } from './errors.js';
import { imageUuid } from './image-export.js';
import type { LazyRecords, LocalRecord } from './lazy-records.js';
import { sourceBdevName } from './naming.js';
import { isNotFound } from './remote-sources.js';
import { lvolInfoOf } from './schemas.js';

/**
 * The source of a lazy golden over the node's own file (v24.09+, `lazyLocal`): an aio bdev over
 * `ctx.imageFile(name)` whose uuid is the image id, so the lazy golden's clones find it again
 * after a spdk_tgt restart. The file is checked against its record before it is a source again.
 */
export class FileSources {
  constructor(
    private readonly ctx: SpdkContext,
    private readonly records: LazyRecords,
  ) {}

  /**
   * The aio bdev over the node's file, uuid = the image id (idempotent). Made again only after
   * the file is checked against its record (`justVerified`: its digest was just taken).
   */
  async make(name: string, rec: LocalRecord, justVerified = false): Promise<Bdev> {
    const { ctx } = this;
    const bdevName = sourceBdevName(name);
    const existing = await ctx.getBdev(bdevName);
    if (existing) {
      if (existing.uuid !== imageUuid(name)) throw new BackendError(`image ${name}: bdev ${bdevName} exists with uuid ${existing.uuid}, not the image id ${imageUuid(name)}`, 'internal');
      return existing;
    }
    const file = ctx.imageFile(name);
    let size: number;
    try {
      size = (await fs.stat(file)).size;
    } catch (e) {
      throw new BackendError(`image ${name}: its file ${file} is gone (${String(e)}); delete the image to fetch it again`, 'notFound', { cause: e });
    }
    if (size !== rec.sizeBytes) throw new BackendError(`image ${name}: its file is ${size} bytes, its record says ${rec.sizeBytes}`, 'checksum');
    if (!justVerified) {
      const digest = await sha256File(file, ctx.lifetime.signal, rec.dataBytes);
      if (digest !== rec.sha256) throw new BackendError(`image ${name}: its file's sha256 ${digest} is not the recorded ${rec.sha256}`, 'checksum');
      if (!(await zeroFrom(file, rec.dataBytes, ctx.lifetime.signal))) throw new BackendError(`image ${name}: its file's padding after byte ${rec.dataBytes} is not zeros`, 'checksum');
    }
    await ctx.api.bdevAioCreate({ name: bdevName, filename: file, block_size: ctx.lvstore.blockSize, uuid: imageUuid(name) }).catch((e: unknown) => {
      if (!(e instanceof SpdkError && e.kind === 'exists')) throw toBackendError(e, `image ${name}: aio bdev over ${file}`);
    });
    await ctx.api.bdevWaitForExamine().catch(() => undefined);
    const bdev = await ctx.getBdev(bdevName);
    if (!bdev) throw new BackendError(`image ${name}: aio bdev ${bdevName} not listed after creating it`, 'internal');
    ctx.log.info({ event: 'lazy.source.file', image: name, bdev: bdevName, uuid: bdev.uuid }, 'file source ready');
    return bdev;
  }

  /** Deletes the file source once no lvol names it as its external snapshot. */
  async drop(name: string, log: Logger): Promise<void> {
    const { ctx } = this;
    const bdevName = sourceBdevName(name);
    const src = await ctx.getBdev(bdevName);
    if (src) {
      const readers: string[] = [];
      for (const l of await ctx.listLvols()) {
        if (l.is_degraded) readers.push(l.name);
        else if (l.is_esnap_clone) {
          const info = lvolInfoOf((await ctx.getBdev(l.alias)) ?? ({ driver_specific: {} } as Bdev));
          if (info?.external_snapshot_name === bdevName || info?.external_snapshot_name === src.uuid) readers.push(l.name);
        }
      }
      if (readers.length > 0) throw new BackendError(`image ${name}: ${bdevName} still backs ${readers.join(', ')}; not deleting it`, 'busy');
      await ctx.api.bdevAioDelete({ name: bdevName }).catch((e: unknown) => {
        if (!isNotFound(e)) throw toBackendError(e, `image ${name}: deleting ${bdevName}`);
      });
      log.info({ event: 'lazy.source.dropped', bdev: bdevName }, 'file source deleted');
    }
    await fs.rm(ctx.imageFile(name), { force: true });
    await this.records.drop('local', name);
  }
}

/** sha256 of a file's first `bytes` bytes, or all of it (a lazy source is checked before guests read it). */
export async function sha256File(file: string, signal: AbortSignal, bytes?: number): Promise<string> {
  const hash = createHash('sha256');
  if (bytes === 0) return hash.digest('hex');
  const opts = { signal, highWaterMark: 1 << 20, ...(bytes !== undefined ? { end: bytes - 1 } : {}) };
  for await (const chunk of createReadStream(file, opts)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Whether every byte of `file` from `offset` on is zero (the cluster padding of a lazy source). */
async function zeroFrom(file: string, offset: number, signal: AbortSignal): Promise<boolean> {
  for await (const chunk of createReadStream(file, { signal, start: offset, highWaterMark: 1 << 20 })) {
    if ((chunk as Buffer).some((b) => b !== 0)) return false;
  }
  return true;
}
