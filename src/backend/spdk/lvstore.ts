import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { formatZodError } from '../../api/errors.js';
import { writeFileAtomic } from '../../fsutil.js';
import { SpdkError } from '../../spdk/errors.js';
import type { Lvstore } from '../../spdk/schemas.js';
import { BackendError } from '../types.js';
import { DEFAULT_AIO_BLOCK_SIZE, type BaseBdevSpec } from './config.js';
import { MiB, type SpdkCapabilities, type SpdkContext } from './context.js';
import { toBackendError } from './errors.js';
import { classifyLvol, sourceBdevName } from './naming.js';

/**
 * Bring-up and recovery of the lvstore, once per connection (a new connection may be a new
 * spdk_tgt): read what the target can do (the path taken depends on the version: v24.01 vs
 * v24.09+), load or make the lvstore's base exactly as it was first made, let the lvstore load
 * during examine (or create it), and re-create every external-snapshot source so that no
 * esnap clone stays degraded. Controllers come after (the reconciler's next step).
 */

/** Where the backend records how it made the lvstore's base, so a restart re-creates it exactly. */
export const BASE_RECORD_FILE = 'lvstore-base.json';

const BaseRecordSchema = z.object({ kind: z.literal('aio'), name: z.string().min(1), filename: z.string().min(1), blockSize: z.number().int().positive() }).strict();
type BaseRecord = z.output<typeof BaseRecordSchema>;

export class LvstoreKeeper {
  private lvstoreReady: Promise<void> | undefined;
  /** Attaches the other nodes' exports lazy clones read (set by the backend; see LazyStore.reattachAll). */
  reattachLazySources: (() => Promise<void>) | undefined;

  constructor(private readonly ctx: SpdkContext) {}

  /** The next ready() checks the lvstore again (after a reconnect). */
  reset(): void {
    this.lvstoreReady = undefined;
  }

  /** Makes sure the lvstore is loaded; once per connection (spdk_tgt may have restarted). */
  ready(): Promise<void> {
    if (!this.lvstoreReady) {
      const p: Promise<void> = this.ensureLvstore().catch((e: unknown) => {
        if (this.lvstoreReady === p) this.lvstoreReady = undefined;
        throw toBackendError(e, `lvstore ${this.ctx.lvs}`);
      });
      this.lvstoreReady = p;
    }
    return this.lvstoreReady;
  }

  /** The aio bdev an import reads from; on v24.09+ with a UUID that survives restarts. */
  async createImportSource(image: string, file: string): Promise<void> {
    const { ctx } = this;
    await ctx.api.bdevAioCreate({
      name: sourceBdevName(image),
      filename: file,
      block_size: ctx.lvstore.blockSize,
      ...(ctx.capabilities?.aioUuid ? { uuid: stableUuid(`${ctx.lvs}/${image}`) } : {}),
    });
  }

  private async ensureLvstore(): Promise<void> {
    const { ctx } = this;
    ctx.capabilities = await this.readCapabilities();
    const found = await this.getLvstore();
    const spec = ctx.cfg.lvstore.baseBdev;
    // The record is checked even when the lvstore is loaded: a configuration that could not
    // re-create its base after the next restart is refused now, not then.
    if (spec.kind === 'aio') await this.aioBaseRecord(spec, found?.block_size);
    if (found) {
      this.useLvstore(found);
      // spdk_tgt may have loaded the lvstore itself (its own config attaches an NVMe base).
      await this.recoverEsnapSources();
      return;
    }
    // After a restart: the base first (exactly as it was made), then the lvstore loads by
    // itself during examine, then every external-snapshot source, so that no esnap clone
    // stays degraded; controllers come after (the reconciler's next step).
    const base = await this.ensureBaseBdev();
    await this.waitForExamine();
    const reloaded = await this.getLvstore();
    if (reloaded) {
      this.useLvstore(reloaded);
      ctx.log.info({ event: 'lvstore.reloaded', baseBdev: base }, 'lvstore loaded from its base bdev');
      await this.recoverEsnapSources();
      return;
    }
    const bdev = await ctx.getBdev(base);
    if (!bdev) throw new BackendError(`base bdev ${base} of lvstore ${ctx.lvs} disappeared`, 'notFound');
    if (bdev.claimed) {
      // Never format a bdev something else holds (e.g. an lvstore under another name).
      throw new BackendError(`base bdev ${base} is claimed by another module; not creating lvstore ${ctx.lvs} on it`, 'busy');
    }
    await ctx.api.bdevLvolCreateLvstore({
      bdev_name: base,
      lvs_name: ctx.lvs,
      ...(ctx.cfg.lvstore.clusterSizeBytes !== undefined ? { cluster_sz: ctx.cfg.lvstore.clusterSizeBytes } : {}),
    });
    const created = await this.getLvstore();
    if (!created) throw new BackendError(`lvstore ${ctx.lvs} not listed after creating it`, 'internal');
    this.useLvstore(created);
    ctx.log.info({ event: 'lvstore.created', baseBdev: base, clusterBytes: created.cluster_size, blockSize: created.block_size }, 'lvstore created');
  }

  private useLvstore(l: Lvstore): void {
    this.ctx.lvstore = { clusterBytes: l.cluster_size, blockSize: l.block_size, uuid: l.uuid, baseName: l.base_bdev };
  }

  /** spdk_get_version + rpc_get_methods: the path taken depends on the version (v24.01 vs v24.09+). */
  private async readCapabilities(): Promise<SpdkCapabilities> {
    const { ctx } = this;
    const [v, methods] = await Promise.all([ctx.api.spdkGetVersion(), ctx.api.rpcGetMethods()]);
    const { major, minor } = v.fields;
    const caps: SpdkCapabilities = { version: v.version, major, minor, methods: new Set(methods), aioUuid: major > 24 || (major === 24 && minor >= 9) };
    if (ctx.capabilities?.version !== caps.version) {
      ctx.log.info({ event: 'spdk.version', version: caps.version, aioUuid: caps.aioUuid, methods: caps.methods.size }, 'connected to spdk_tgt');
    }
    return caps;
  }

  /**
   * The aio base as it was first made: block size and name come from the record written when
   * the file was created (a different block size would not load the lvstore, or load it wrong).
   */
  private async ensureBaseBdev(): Promise<string> {
    const { ctx } = this;
    const spec = ctx.cfg.lvstore.baseBdev;
    if (spec.kind === 'existing') {
      if (!(await ctx.getBdev(spec.name))) {
        throw new BackendError(`base bdev ${spec.name} of lvstore ${ctx.lvs} does not exist`, 'notFound');
      }
      return spec.name;
    }
    if (spec.kind === 'malloc') {
      const name = spec.name ?? `${ctx.lvs}-base`;
      if (await ctx.getBdev(name)) return name;
      await ctx.api.bdevMallocCreate({ name, num_blocks: (spec.sizeMiB * MiB) / 4096, block_size: 4096 });
      ctx.log.info({ event: 'lvstore.base.created', baseBdev: name, kind: spec.kind }, 'base bdev created');
      return name;
    }
    const record = await this.aioBaseRecord(spec);
    if (await ctx.getBdev(record.name)) return record.name;
    await ctx.api.bdevAioCreate({ name: record.name, filename: record.filename, block_size: record.blockSize });
    ctx.log.info({ event: 'lvstore.base.created', baseBdev: record.name, kind: 'aio', blockSize: record.blockSize }, 'base bdev created');
    return record.name;
  }

  /** `loadedBlockSize`: the block size of the lvstore already loaded (an agent before records). */
  private async aioBaseRecord(spec: Extract<BaseBdevSpec, { kind: 'aio' }>, loadedBlockSize?: number): Promise<BaseRecord> {
    const { ctx } = this;
    const file = path.join(ctx.cfg.stateDir, BASE_RECORD_FILE);
    const wanted: BaseRecord = {
      kind: 'aio',
      name: spec.name ?? `${ctx.lvs}-base`,
      filename: spec.filename,
      blockSize: loadedBlockSize ?? spec.blockSize ?? DEFAULT_AIO_BLOCK_SIZE,
    };
    let text: string | undefined;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (text !== undefined) {
      let parsed: ReturnType<typeof BaseRecordSchema.safeParse>;
      try {
        parsed = BaseRecordSchema.safeParse(JSON.parse(text));
      } catch (e) {
        throw new BackendError(`${file}: not JSON (${(e as Error).message}); it records how the lvstore base was made`, 'invalid');
      }
      if (!parsed.success) throw new BackendError(formatZodError(file, parsed.error).join('; '), 'invalid');
      const rec = parsed.data;
      if (rec.filename !== wanted.filename) {
        throw new BackendError(`lvstore base: ${file} records file ${rec.filename}, configured ${wanted.filename}`, 'invalid');
      }
      if (spec.blockSize !== undefined && spec.blockSize !== rec.blockSize) {
        throw new BackendError(
          `lvstore base ${rec.filename} was created with block size ${rec.blockSize}; the configured ${spec.blockSize} cannot load it (remove the file to start over)`,
          'invalid',
        );
      }
      return rec;
    }
    if (spec.blockSize !== undefined && spec.blockSize !== wanted.blockSize) {
      throw new BackendError(`lvstore ${ctx.lvs} is loaded with block size ${wanted.blockSize}; the configured ${spec.blockSize} differs`, 'invalid');
    }
    if (loadedBlockSize === undefined) await ensureBackingFile(spec.filename, spec.sizeMiB);
    await writeFileAtomic(file, `${JSON.stringify(wanted)}\n`);
    return wanted;
  }

  /** bdev_wait_for_examine: lvstores load during examine; older targets lack the method. */
  private async waitForExamine(): Promise<void> {
    const { ctx } = this;
    if (ctx.capabilities && !ctx.capabilities.methods.has('bdev_wait_for_examine')) return;
    try {
      await ctx.api.bdevWaitForExamine();
    } catch (e) {
      if (!(e instanceof SpdkError && e.kind === 'methodNotFound')) throw e;
    }
  }

  /**
   * After a restart, esnap clones whose source bdev is gone load degraded (no bdev) until a
   * bdev with the source's UUID exists again. Our only esnap sources are import sources: on
   * v24.09+ they carry a UUID derived from the image, so they can be made again here.
   */
  private async recoverEsnapSources(): Promise<void> {
    const { ctx } = this;
    let degraded = (await ctx.api.bdevLvolGetLvols({ lvs_name: ctx.lvs })).filter((l) => l.is_degraded);
    if (degraded.length > 0 && this.reattachLazySources) {
      // Lazy images and disks read other nodes' exports: attach them again (same namespace id).
      await this.reattachLazySources();
      await this.waitForExamine();
      degraded = (await ctx.api.bdevLvolGetLvols({ lvs_name: ctx.lvs })).filter((l) => l.is_degraded);
    }
    for (const l of degraded) {
      const role = classifyLvol(l.name);
      const file = role.role === 'importing' ? ctx.imageFile(role.image) : undefined;
      if (role.role !== 'importing' || file === undefined || !ctx.capabilities?.aioUuid || !(await exists(file))) {
        ctx.log.warn({ event: 'esnap.degraded', lvol: l.alias }, 'lvol is degraded (its external snapshot is gone); an import is redone, anything else needs its source back');
        continue;
      }
      await this.createImportSource(role.image, file);
      ctx.log.info({ event: 'esnap.source.recovered', lvol: l.alias, image: role.image }, 'external snapshot source re-created');
    }
  }

  private async getLvstore(): Promise<Lvstore | undefined> {
    const { ctx } = this;
    try {
      return (await ctx.api.bdevLvolGetLvstores({ lvs_name: ctx.lvs })).find((l) => l.name === ctx.lvs);
    } catch (e) {
      if (e instanceof SpdkError && e.kind === 'notFound') return undefined;
      throw e;
    }
  }
}

async function ensureBackingFile(filename: string, sizeMiB: number | undefined): Promise<void> {
  try {
    await fs.stat(filename);
    return;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (sizeMiB === undefined) {
    throw new BackendError(`lvstore base file ${filename} does not exist and lvstore.baseBdev.sizeMiB is not set`, 'invalid');
  }
  await fs.mkdir(path.dirname(filename), { recursive: true });
  // 'wx': never truncate a file that appeared meanwhile (it may hold an lvstore).
  const fh = await fs.open(filename, 'wx');
  try {
    await fh.truncate(sizeMiB * MiB);
  } finally {
    await fh.close();
  }
}

/** A UUID that is always the same for `key` (an import source must keep its UUID across restarts). */
export function stableUuid(key: string): string {
  const h = createHash('sha256').update(`kubevirt-spdk:${key}`).digest('hex');
  // RFC 4122 layout: version 5 nibble, variant 10xx.
  const variant = ((parseInt(h[16] ?? '0', 16) & 0x3) | 0x8).toString(16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

export async function exists(file: string): Promise<boolean> {
  try {
    await fs.stat(file);
    return true;
  } catch {
    return false;
  }
}
