import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { MAX_SOCKET_PATH_BYTES, socketPathTooLong } from '../../api/limits.js';
import { formatZodError } from '../../api/errors.js';
import { silentLogger, type Logger } from '../../log.js';
import { SpdkApi } from '../../spdk/api.js';
import { SpdkRpcClient } from '../../spdk/client.js';
import { SpdkError } from '../../spdk/errors.js';
import type { Bdev, Lvol, Lvstore, VhostController } from '../../spdk/schemas.js';
import { writeFileAtomic } from '../../fsutil.js';
import { backoffMs, sleep, type Backoff } from '../../backoff.js';
import { ensureSlotDir } from '../vhost-fs.js';
import { fetchImage as defaultFetchImage, type FetchOptions } from '../image-source.js';
import {
  BackendError,
  type BackendHealth,
  type ControllerSpec,
  type DiskSpec,
  type ImageSpec,
  type ObservedController,
  type ObservedDisk,
  type ObservedImage,
  type ObservedState,
  type StorageBackend,
} from '../types.js';
import { KeyedMutex, SingleFlight } from './concurrency.js';
import { CloneLanes } from './lanes.js';
import { toBackendError } from './errors.js';
import * as remote from './export.js';
import type { ExportOptions, RemoteDiskRef } from '../remote.js';
import {
  checkControllerName,
  checkDiskId,
  checkImageName,
  classifyLvol,
  fanoutName,
  fanoutTmpName,
  goldenName,
  imageOfSnapshot,
  imageOfSourceBdev,
  importingName,
  lvolAlias,
  sourceBdevName,
} from './naming.js';
import { buildObservedState, ceilMiB, diskRefOf, lvolBytes, planCloneSize, type ImportProgress } from './observe.js';
import { bdevSizeBytes, lvolInfoOf } from './schemas.js';

const MiB = 1024 * 1024;
/** How often start() looks for an spdk_tgt that went away while the agent started. */
const START_BACKOFF: Backoff = { initialMs: 50, maxMs: 2_000 };
/**
 * Block size of a development aio lvstore base when none is given. 512, not 4096: an lvol's
 * block size is its lvstore's, and that is the logical block size the guest sees; distro disk
 * images carry partition tables in 512-byte LBAs, which a guest on 4096-byte blocks misreads.
 * A 4Kn device as base (`existing`) works too: images are then imported at 4096.
 */
export const DEFAULT_AIO_BLOCK_SIZE = 512;
/** Where the backend records how it made the lvstore's base, so a restart re-creates it exactly. */
export const BASE_RECORD_FILE = 'lvstore-base.json';

const BaseRecordSchema = z.object({ kind: z.literal('aio'), name: z.string().min(1), filename: z.string().min(1), blockSize: z.number().int().positive() }).strict();
type BaseRecord = z.output<typeof BaseRecordSchema>;

/** What this spdk_tgt can do, read once per connection. */
export interface SpdkCapabilities {
  version: string;
  major: number;
  minor: number;
  methods: ReadonlySet<string>;
  /** `bdev_aio_create` takes `uuid` (v24.09+): an import's source keeps its UUID across restarts. */
  aioUuid: boolean;
}

const BaseBdevSchema = z.discriminatedUnion('kind', [
  z
    .object({
      kind: z.literal('aio'),
      filename: z.string().min(1),
      /** Size of the file when it has to be created; an existing file is used as it is. */
      sizeMiB: z.number().int().positive().optional(),
      /** 512 or 4096; DEFAULT_AIO_BLOCK_SIZE when unset (real SPDK cannot detect it for a file). */
      blockSize: z.union([z.literal(512), z.literal(4096)]).optional(),
      name: z.string().min(1).optional(),
    })
    .strict(),
  z.object({ kind: z.literal('malloc'), sizeMiB: z.number().int().positive(), name: z.string().min(1).optional() }).strict(),
  z.object({ kind: z.literal('existing'), name: z.string().min(1) }).strict(),
]);

/** The data part of the options: what a CLI flag or a config file can say. */
export const SpdkBackendConfigSchema = z
  .object({
    lvstore: z
      .object({
        name: z.string().min(1).max(63).regex(/^[A-Za-z0-9_.-]+$/, 'must be [A-Za-z0-9_.-]').default('kvs'),
        baseBdev: BaseBdevSchema,
        /** cluster_sz of a newly created lvstore (SPDK's default is 4 MiB). */
        clusterSizeBytes: z.number().int().positive().optional(),
      })
      .strict(),
    vhostDir: z.string().min(1),
    /** Downloaded images live in `<stateDir>/images/` until they are in the lvstore. */
    stateDir: z.string().min(1),
    cpumask: z.string().optional(),
    /** Snapshots an image's disks are cloned from in parallel under load (golden + fan-outs). */
    cloneLanes: z.number().int().min(1).max(16).default(4),
    /** Deadline of bdev_lvol_inflate, which copies the whole image. */
    inflateTimeoutMs: z.number().int().positive().default(60 * 60_000),
  })
  .strict();
export type SpdkBackendConfig = z.output<typeof SpdkBackendConfigSchema>;
export type BaseBdevSpec = z.output<typeof BaseBdevSchema>;

export type SpdkBackendOptions = z.input<typeof SpdkBackendConfigSchema> & {
  client: SpdkRpcClient;
  /** Defaults to `new SpdkApi(client)`. */
  api?: SpdkApi;
  logger?: Logger;
  /** Replaces the image fetcher (tests, other transports). */
  fetchImage?: typeof defaultFetchImage;
  fetchOptions?: Omit<FetchOptions, 'signal' | 'logger'>;
};

/**
 * StorageBackend on spdk_tgt: a node-local lvstore caches golden images, disks are thin
 * clones of them, controllers are vhost-user-blk. All state lives in SPDK and is read back
 * by listing; this object only remembers what SPDK cannot tell (imports running now).
 *
 * Image import: file -> `bdev_aio_create` -> `bdev_lvol_clone_bdev` (`img-X-importing`) ->
 * `bdev_lvol_inflate` -> `bdev_lvol_snapshot` named `img-X` (the golden) -> delete the
 * now-empty importing lvol and the aio bdev. `ensureImage` resolves only once the golden
 * exists, i.e. after hydration: v24.01 gives an aio bdev a new UUID on every create and an
 * esnap clone refers to that UUID, so a disk cloned before inflate would lose its data
 * source at the next spdk_tgt restart. A snapshot (not set_read_only + rename) makes the
 * golden: it appears under its final name in one step, already read-only and cloneable, so
 * a crash can never leave a `img-X` that is incomplete.
 */
export class SpdkBackend extends EventEmitter implements StorageBackend {
  readonly kind = 'spdk' as const;
  readonly vhostDir: string;
  private readonly cfg: SpdkBackendConfig;
  private readonly client: SpdkRpcClient;
  private readonly api: SpdkApi;
  private readonly log: Logger;
  private readonly fetchImage: typeof defaultFetchImage;
  private readonly fetchOptions: Omit<FetchOptions, 'signal' | 'logger'>;
  private readonly lvs: string;
  private readonly lifetime = new AbortController();
  private readonly reads = new SingleFlight();
  private readonly diskLocks = new KeyedMutex();
  /**
   * Metadata operations on one snapshot, one at a time: real SPDK answers "Device or resource
   * busy" to a clone of a snapshot while another clone (or delete of a clone) of it runs.
   */
  private readonly snapshotLocks = new KeyedMutex();
  /** Clone lanes per image (see lanes.ts); found again from the listing after a reconnect. */
  private readonly cloneLanes = new Map<string, CloneLanes>();
  /** Fan-out clones (`.tmp`) being made now, and left-over ones being deleted now. */
  private readonly fanoutTmps = new Set<string>();
  private readonly controllerLocks = new KeyedMutex();
  private readonly imports = new Map<string, Promise<ObservedImage>>();
  private readonly progress = new Map<string, ImportProgress>();
  /** Exact sizes of images imported by this process (the golden is rounded up to clusters). */
  private readonly imageSizes = new Map<string, number>();
  private clusterBytes = 4 * MiB;
  /** The lvstore's block size: an image's aio bdev must use it (4096 lvstore + 512 image fails inflate). */
  private lvsBlockSize = DEFAULT_AIO_BLOCK_SIZE;
  private lvsUuid: string | undefined;
  private baseName: string | undefined;
  private capabilities: SpdkCapabilities | undefined;
  private lvstoreReady: Promise<void> | undefined;
  private readonly onConnected = (): void => {
    // A new connection may be a new spdk_tgt: check the lvstore again before the next use.
    this.lvstoreReady = undefined;
    this.cloneLanes.clear();
    this.emit('connected');
  };
  private readonly onDisconnected = (info?: unknown): void => {
    this.emit('disconnected', info);
  };

  constructor(opts: SpdkBackendOptions) {
    super();
    const { client, api, logger, fetchImage, fetchOptions, ...config } = opts;
    const parsed = SpdkBackendConfigSchema.safeParse(config);
    if (!parsed.success) throw new BackendError(formatZodError('spdk backend', parsed.error).join('; '), 'invalid');
    this.cfg = parsed.data;
    this.vhostDir = this.cfg.vhostDir;
    this.lvs = this.cfg.lvstore.name;
    this.client = client;
    this.api = api ?? new SpdkApi(client);
    this.log = (logger ?? silentLogger).child({ component: 'spdk-backend', lvs: this.lvs });
    this.fetchImage = fetchImage ?? defaultFetchImage;
    this.fetchOptions = fetchOptions ?? {};
    client.on('connected', this.onConnected);
    client.on('disconnected', this.onDisconnected);
  }

  async start(): Promise<void> {
    // spdk_tgt may die, and be restarted, while the agent starts: wait for it again (as a
    // reconcile round does) instead of failing the agent's start on a lost connection.
    for (let attempt = 0; ; attempt++) {
      try {
        await this.client.connect();
        await this.api.frameworkWaitInit().catch((e: unknown) => {
          throw toBackendError(e, 'framework_wait_init');
        });
        await this.ready();
        break;
      } catch (e) {
        const err = toBackendError(e, 'start');
        if (err.kind !== 'transport' || this.lifetime.signal.aborted) {
          // Nothing may keep the process alive after a failed start (an open RPC socket would).
          await this.close().catch(() => undefined);
          throw err;
        }
        this.log.warn({ event: 'backend.start-retry', attempt, error: err.message }, 'SPDK went away while starting: waiting for it');
        await sleep(backoffMs(attempt + 1, START_BACKOFF));
      }
    }
    this.log.info(
      { event: 'backend.started', clusterBytes: this.clusterBytes, blockSize: this.lvsBlockSize, spdk: this.capabilities?.version },
      'spdk backend ready',
    );
  }

  /** What the connected spdk_tgt supports (known after start()). */
  get caps(): SpdkCapabilities | undefined {
    return this.capabilities;
  }

  /** Stops running imports and closes the RPC client. */
  async close(): Promise<void> {
    this.lifetime.abort(new BackendError('backend closed', 'transport'));
    await Promise.allSettled([...this.imports.values()]);
    this.client.off('connected', this.onConnected);
    this.client.off('disconnected', this.onDisconnected);
    await this.client.close();
  }

  async health(): Promise<BackendHealth> {
    try {
      const v = await this.api.spdkGetVersion({ timeoutMs: 5_000 });
      return { ok: true, kind: 'spdk', version: v.version };
    } catch (e) {
      return { ok: false, kind: 'spdk', message: e instanceof Error ? e.message : String(e) };
    }
  }

  async observe(): Promise<ObservedState> {
    await this.ready();
    const [lvols, bdevs, controllers] = await Promise.all([this.listLvols(), this.listBdevs(), this.listControllers()]);
    this.tidyFinishedImports(lvols, bdevs);
    return buildObservedState({
      lvsName: this.lvs,
      vhostDir: this.vhostDir,
      lvols,
      bdevs,
      controllers,
      imports: this.progress,
    });
  }

  // ---- lvstore ------------------------------------------------------------------------------

  /** Makes sure the lvstore is loaded; once per connection (spdk_tgt may have restarted). */
  private ready(): Promise<void> {
    if (!this.lvstoreReady) {
      const p: Promise<void> = this.ensureLvstore().catch((e: unknown) => {
        if (this.lvstoreReady === p) this.lvstoreReady = undefined;
        throw toBackendError(e, `lvstore ${this.lvs}`);
      });
      this.lvstoreReady = p;
    }
    return this.lvstoreReady;
  }

  private async ensureLvstore(): Promise<void> {
    this.capabilities = await this.readCapabilities();
    const found = await this.getLvstore();
    const spec = this.cfg.lvstore.baseBdev;
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
      this.log.info({ event: 'lvstore.reloaded', baseBdev: base }, 'lvstore loaded from its base bdev');
      await this.recoverEsnapSources();
      return;
    }
    const bdev = await this.getBdev(base);
    if (!bdev) throw new BackendError(`base bdev ${base} of lvstore ${this.lvs} disappeared`, 'notFound');
    if (bdev.claimed) {
      // Never format a bdev something else holds (e.g. an lvstore under another name).
      throw new BackendError(`base bdev ${base} is claimed by another module; not creating lvstore ${this.lvs} on it`, 'busy');
    }
    await this.api.bdevLvolCreateLvstore({
      bdev_name: base,
      lvs_name: this.lvs,
      ...(this.cfg.lvstore.clusterSizeBytes !== undefined ? { cluster_sz: this.cfg.lvstore.clusterSizeBytes } : {}),
    });
    const created = await this.getLvstore();
    if (!created) throw new BackendError(`lvstore ${this.lvs} not listed after creating it`, 'internal');
    this.useLvstore(created);
    this.log.info({ event: 'lvstore.created', baseBdev: base, clusterBytes: created.cluster_size, blockSize: created.block_size }, 'lvstore created');
  }

  private useLvstore(l: Lvstore): void {
    this.clusterBytes = l.cluster_size;
    this.lvsBlockSize = l.block_size;
    this.lvsUuid = l.uuid;
    this.baseName = l.base_bdev;
  }

  /** spdk_get_version + rpc_get_methods: the path taken depends on the version (v24.01 vs v24.09+). */
  private async readCapabilities(): Promise<SpdkCapabilities> {
    const [v, methods] = await Promise.all([this.api.spdkGetVersion(), this.api.rpcGetMethods()]);
    const { major, minor } = v.fields;
    const caps: SpdkCapabilities = { version: v.version, major, minor, methods: new Set(methods), aioUuid: major > 24 || (major === 24 && minor >= 9) };
    if (this.capabilities?.version !== caps.version) {
      this.log.info({ event: 'spdk.version', version: caps.version, aioUuid: caps.aioUuid, methods: caps.methods.size }, 'connected to spdk_tgt');
    }
    return caps;
  }

  /**
   * The aio base as it was first made: block size and name come from the record written when
   * the file was created (a different block size would not load the lvstore, or load it wrong).
   */
  private async ensureBaseBdev(): Promise<string> {
    const spec = this.cfg.lvstore.baseBdev;
    if (spec.kind === 'existing') {
      if (!(await this.getBdev(spec.name))) {
        throw new BackendError(`base bdev ${spec.name} of lvstore ${this.lvs} does not exist`, 'notFound');
      }
      return spec.name;
    }
    if (spec.kind === 'malloc') {
      const name = spec.name ?? `${this.lvs}-base`;
      if (await this.getBdev(name)) return name;
      await this.api.bdevMallocCreate({ name, num_blocks: (spec.sizeMiB * MiB) / 4096, block_size: 4096 });
      this.log.info({ event: 'lvstore.base.created', baseBdev: name, kind: spec.kind }, 'base bdev created');
      return name;
    }
    const record = await this.aioBaseRecord(spec);
    if (await this.getBdev(record.name)) return record.name;
    await this.api.bdevAioCreate({ name: record.name, filename: record.filename, block_size: record.blockSize });
    this.log.info({ event: 'lvstore.base.created', baseBdev: record.name, kind: 'aio', blockSize: record.blockSize }, 'base bdev created');
    return record.name;
  }

  /** `loadedBlockSize`: the block size of the lvstore already loaded (an agent before records). */
  private async aioBaseRecord(spec: Extract<BaseBdevSpec, { kind: 'aio' }>, loadedBlockSize?: number): Promise<BaseRecord> {
    const file = path.join(this.cfg.stateDir, BASE_RECORD_FILE);
    const wanted: BaseRecord = {
      kind: 'aio',
      name: spec.name ?? `${this.lvs}-base`,
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
      throw new BackendError(`lvstore ${this.lvs} is loaded with block size ${wanted.blockSize}; the configured ${spec.blockSize} differs`, 'invalid');
    }
    if (loadedBlockSize === undefined) await ensureBackingFile(spec.filename, spec.sizeMiB);
    await writeFileAtomic(file, `${JSON.stringify(wanted)}\n`);
    return wanted;
  }

  /** bdev_wait_for_examine: lvstores load during examine; older targets lack the method. */
  private async waitForExamine(): Promise<void> {
    if (this.capabilities && !this.capabilities.methods.has('bdev_wait_for_examine')) return;
    try {
      await this.api.bdevWaitForExamine();
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
    const degraded = (await this.api.bdevLvolGetLvols({ lvs_name: this.lvs })).filter((l) => l.is_degraded);
    for (const l of degraded) {
      const role = classifyLvol(l.name);
      const file = role.role === 'importing' ? this.imageFile(role.image) : undefined;
      if (role.role !== 'importing' || file === undefined || !this.capabilities?.aioUuid || !(await exists(file))) {
        this.log.warn({ event: 'esnap.degraded', lvol: l.alias }, 'lvol is degraded (its external snapshot is gone); an import is redone, anything else needs its source back');
        continue;
      }
      await this.createImportSource(role.image, file);
      this.log.info({ event: 'esnap.source.recovered', lvol: l.alias, image: role.image }, 'external snapshot source re-created');
    }
  }

  private async createImportSource(image: string, file: string): Promise<void> {
    await this.api.bdevAioCreate({
      name: sourceBdevName(image),
      filename: file,
      block_size: this.lvsBlockSize,
      ...(this.capabilities?.aioUuid ? { uuid: stableUuid(`${this.lvs}/${image}`) } : {}),
    });
  }

  private async getLvstore(): Promise<Lvstore | undefined> {
    try {
      return (await this.api.bdevLvolGetLvstores({ lvs_name: this.lvs })).find((l) => l.name === this.lvs);
    } catch (e) {
      if (e instanceof SpdkError && e.kind === 'notFound') return undefined;
      throw e;
    }
  }

  // ---- reads (shared between concurrent callers) --------------------------------------------

  private listLvols(): Promise<Lvol[]> {
    return this.reads.run('lvols', () => this.api.bdevLvolGetLvols({ lvs_name: this.lvs })).catch((e: unknown) => {
      throw toBackendError(e, `listing lvols of ${this.lvs}`);
    });
  }

  private listBdevs(): Promise<Bdev[]> {
    return this.reads.run('bdevs', () => this.api.bdevGetBdevs()).catch((e: unknown) => {
      throw toBackendError(e, 'listing bdevs');
    });
  }

  private listControllers(): Promise<VhostController[]> {
    return this.reads.run('controllers', () => this.api.vhostGetControllers()).catch((e: unknown) => {
      throw toBackendError(e, 'listing vhost controllers');
    });
  }

  /** One bdev by name or alias; undefined when SPDK has none. */
  private getBdev(name: string): Promise<Bdev | undefined> {
    return this.reads.run(`bdev:${name}`, async () => {
      try {
        return (await this.api.bdevGetBdevs({ name }))[0];
      } catch (e) {
        if (e instanceof SpdkError && e.kind === 'notFound') return undefined;
        throw toBackendError(e, `looking up bdev ${name}`);
      }
    });
  }

  // ---- images -------------------------------------------------------------------------------

  ensureImage(spec: ImageSpec, signal?: AbortSignal): Promise<ObservedImage> {
    checkImageName(spec.name);
    let shared = this.imports.get(spec.name);
    if (!shared) {
      shared = this.importImage(spec).finally(() => this.imports.delete(spec.name));
      // Every caller may detach (below): the import's failure must never be an unhandled rejection.
      shared.catch(() => undefined);
      this.imports.set(spec.name, shared);
    }
    // The import is shared: one caller giving up detaches that caller, it does not cancel
    // the import the others wait for (close() cancels it).
    return signal ? detachOnAbort(shared, signal) : shared;
  }

  private async importImage(spec: ImageSpec): Promise<ObservedImage> {
    const name = spec.name;
    const log = this.log.child({ image: name });
    const signal = this.lifetime.signal;
    const importing = lvolAlias(this.lvs, importingName(name));
    const file = this.imageFile(name);
    await this.ready();
    const lvols = await this.listLvols();
    const has = (lvolName: string): boolean => lvols.some((l) => l.name === lvolName);

    if (has(goldenName(name))) {
      // Finished earlier; tidy what a crash after the snapshot may have left.
      if (has(importingName(name))) await this.deleteLvolQuietly(importing, log);
      await this.dropSource(name, log, true);
      this.progress.delete(name);
      return this.describeImage(name);
    }
    if (has(importingName(name))) {
      log.warn({ event: 'image.import.stale', lvol: importing }, 'half-made import found; redoing it');
      await this.deleteLvol(importing);
    }
    await this.dropSource(name, log, false);

    const started = Date.now();
    this.progress.set(name, { phase: 'importing', ...(spec.sizeBytes !== undefined ? { sizeBytes: spec.sizeBytes } : {}) });
    let goldenMade = false;
    try {
      const sizeBytes = await this.fetchToNode(spec, file, log);
      this.imageSizes.set(name, sizeBytes);
      this.progress.set(name, { phase: 'importing', sizeBytes });
      signal.throwIfAborted();
      // An esnap clone is sized in whole clusters; zero-pad so the aio bdev covers it all.
      const padded = Math.ceil(sizeBytes / this.clusterBytes) * this.clusterBytes;
      if (padded !== sizeBytes) await fs.truncate(file, padded);

      await this.createImportSource(name, file);
      await this.api.bdevLvolCloneBdev({ bdev: sourceBdevName(name), lvs_name: this.lvs, clone_name: importingName(name) });
      signal.throwIfAborted();
      this.progress.set(name, { phase: 'hydrating', sizeBytes });
      log.info({ event: 'image.import.hydrate', sizeBytes }, 'inflating image into the lvstore');
      await this.api.bdevLvolInflate({ name: importing }, { timeoutMs: this.cfg.inflateTimeoutMs, signal });
      await this.api.bdevLvolSnapshot({ lvol_name: importing, snapshot_name: goldenName(name) });
      goldenMade = true;
      // The importing lvol is now an empty clone of the golden; the aio bdev has no users.
      await this.deleteLvolQuietly(importing, log);
      await this.dropSource(name, log, true);
      this.progress.delete(name);
      log.info({ event: 'image.import.done', sizeBytes, ms: Date.now() - started }, 'image cached');
      return await this.describeImage(name);
    } catch (e) {
      const err = toBackendError(e, `importing image ${name}`);
      if (!goldenMade) {
        await this.deleteLvolQuietly(importing, log);
        await this.dropSource(name, log, false);
        this.progress.set(name, { phase: 'failed', message: err.message });
      }
      log.warn({ event: 'image.import.failed', kind: err.kind, err: err.message }, 'image import failed');
      throw err;
    }
  }

  /**
   * A crash after the golden was made can leave its importing lvol, aio source bdev and
   * downloaded file behind; the golden reads as ready, so no ensureImage comes to tidy them.
   * Tidied here, in the background, registered as the image's import (deleteImage waits).
   */
  private tidyFinishedImports(lvols: ReadonlyArray<{ name: string }>, bdevs: ReadonlyArray<{ name: string }>): void {
    const names = new Set(lvols.map((l) => l.name));
    // A crash while a fan-out was made leaves its clone: an empty child of the golden (or of
    // the new fan-out). Deleted under its parent's lock, in the background.
    for (const l of lvols) {
      const r = classifyLvol(l.name);
      if (r.role !== 'fanout' || !r.tmp || this.fanoutTmps.has(l.name)) continue;
      this.fanoutTmps.add(l.name);
      const parent = names.has(fanoutName(r.image, r.index)) ? fanoutName(r.image, r.index) : goldenName(r.image);
      void this.snapshotLocks
        .run(lvolAlias(this.lvs, parent), () => this.deleteLvol(lvolAlias(this.lvs, l.name)))
        .catch((e: unknown) => this.log.warn({ event: 'clone.fanout.tidy_failed', lvol: l.name, error: String(e) }, 'could not delete a left-over fan-out clone'))
        .finally(() => this.fanoutTmps.delete(l.name));
    }
    const bdevNames = new Set(bdevs.map((b) => b.name));
    for (const l of lvols) {
      const role = classifyLvol(l.name);
      if (role.role !== 'golden' || this.imports.has(role.image)) continue;
      const image = role.image;
      if (!names.has(importingName(image)) && !bdevNames.has(sourceBdevName(image))) continue;
      const log = this.log.child({ image });
      const tidy = (async () => {
        log.warn({ event: 'image.import.leftover' }, 'tidying what an interrupted import left next to its golden');
        await this.deleteLvolQuietly(lvolAlias(this.lvs, importingName(image)), log);
        await this.dropSource(image, log, true);
        return this.describeImage(image);
      })().finally(() => this.imports.delete(image));
      tidy.catch(() => undefined);
      this.imports.set(image, tidy);
    }
  }

  private imageFile(name: string): string {
    return path.join(this.cfg.stateDir, 'images', `${name}.raw`);
  }

  /** A complete file at `file` (from an interrupted import) is reused: fetch renames atomically. */
  private async fetchToNode(spec: ImageSpec, file: string, log: Logger): Promise<number> {
    try {
      const st = await fs.stat(file);
      log.info({ event: 'image.fetch.reuse', file, sizeBytes: st.size }, 'reusing downloaded image');
      return st.size;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    await fs.mkdir(path.dirname(file), { recursive: true });
    const fetched = await this.fetchImage(spec, file, { ...this.fetchOptions, signal: this.lifetime.signal, logger: log });
    return fetched.sizeBytes;
  }

  /** Deletes the aio bdev of an import (and its file when asked). */
  private async dropSource(name: string, log: Logger, removeFile: boolean): Promise<void> {
    const src = sourceBdevName(name);
    try {
      if (await this.getBdev(src)) await this.api.bdevAioDelete({ name: src });
    } catch (e) {
      if (!(e instanceof SpdkError && e.kind === 'notFound')) {
        log.warn({ event: 'image.source.delete_failed', bdev: src, err: String(e) }, 'could not delete aio bdev');
      }
    }
    if (removeFile) await fs.rm(this.imageFile(name), { force: true });
  }

  private async describeImage(name: string): Promise<ObservedImage> {
    const alias = lvolAlias(this.lvs, goldenName(name));
    const bdev = await this.getBdev(alias);
    if (!bdev) throw new BackendError(`image ${name}: golden lvol ${alias} vanished`, 'notFound');
    const clones = await this.imageDiskClones(name, bdev);
    return { name, phase: 'ready', sizeBytes: bdevSizeBytes(bdev), ref: alias, cloneCount: clones.length };
  }

  /** The image's fan-outs (and left-over fan-out clones), from the listing. */
  private async fanoutsOf(image: string): Promise<FanoutLvol[]> {
    return fanoutsIn(await this.listLvols(), image);
  }

  /** VM disks cloned from the golden or any of its fan-outs. */
  private async imageDiskClones(image: string, golden: Bdev): Promise<string[]> {
    const fanouts = (await this.fanoutsOf(image)).filter((f) => !f.tmp);
    const bdevs = await Promise.all(fanouts.map((f) => this.getBdev(lvolAlias(this.lvs, f.name))));
    return [golden, ...bdevs].flatMap((b) => (b ? diskClonesOf(b) : []));
  }

  async deleteImage(name: string): Promise<void> {
    checkImageName(name);
    if (this.imports.has(name)) throw new BackendError(`image ${name}: an import is running`, 'busy');
    const log = this.log.child({ image: name });
    await this.ready();
    const golden = lvolAlias(this.lvs, goldenName(name));
    const bdev = await this.getBdev(golden);
    if (bdev) {
      const clones = await this.imageDiskClones(name, bdev);
      if (clones.length > 0) {
        throw new BackendError(`image ${name}: ${clones.length} disk(s) are clones of it (${clones.join(', ')})`, 'busy');
      }
    }
    this.cloneLanes.delete(name);
    // Children first: deleting a snapshot with one clone would merge, not delete.
    await this.deleteLvolQuietly(lvolAlias(this.lvs, importingName(name)), log);
    const fanouts = await this.fanoutsOf(name);
    for (const f of fanouts.filter((x) => x.tmp)) await this.deleteLvol(lvolAlias(this.lvs, f.name));
    for (const f of fanouts.filter((x) => !x.tmp)) await this.deleteLvol(lvolAlias(this.lvs, f.name));
    if (bdev) await this.deleteLvol(golden);
    await this.dropSource(name, log, true);
    this.progress.delete(name);
    this.imageSizes.delete(name);
    log.info({ event: 'image.deleted' }, 'image deleted');
  }

  // ---- disks --------------------------------------------------------------------------------

  ensureDisk(spec: DiskSpec): Promise<ObservedDisk> {
    checkDiskId(spec.id);
    return this.diskLocks.run(spec.id, async () => {
      await this.ready();
      const src = spec.source;
      if (src.kind === 'bdev') {
        const bdev = await this.getBdev(src.bdev);
        if (!bdev) throw new BackendError(`disk ${spec.id}: bdev ${src.bdev} does not exist`, 'notFound');
        const ours = this.ownBdevRole(bdev);
        if (ours) {
          // A tenant naming our golden would get a read-write controller on every VM's base.
          throw new BackendError(`disk ${spec.id}: bdev: ${src.bdev} is ${ours}, which this node's agent manages; name a bdev that is not ours`, 'invalid');
        }
        return { id: spec.id, ref: bdev.name, sizeBytes: bdevSizeBytes(bdev), dependents: 0, owned: false };
      }
      const lvols = await this.listLvols();
      if (lvols.some((l) => l.name === spec.id)) return this.completeExistingDisk(spec);
      return src.kind === 'image' ? this.cloneDisk(spec, src.image, lvols) : this.createBlankDisk(spec);
    });
  }

  /** What a bdev is when this backend made it (lvol of our lvstore, its base, an import source). */
  private ownBdevRole(bdev: Bdev): string | undefined {
    const names = [bdev.name, ...bdev.aliases];
    const info = lvolInfoOf(bdev);
    if ((info?.lvol_store_uuid !== undefined && info.lvol_store_uuid === this.lvsUuid) || names.some((n) => n.startsWith(`${this.lvs}/`))) {
      return `an lvol of lvstore ${this.lvs} (a cached image or a VM disk)`;
    }
    if (this.baseName !== undefined && names.includes(this.baseName)) return `the base bdev of lvstore ${this.lvs}`;
    if (names.some((n) => imageOfSourceBdev(n) !== undefined)) return 'the source bdev of an image import';
    return undefined;
  }

  /** The image's clone lanes: its golden and the fan-outs the listing shows. */
  private lanesOf(image: string, lvols: readonly Lvol[]): CloneLanes {
    let lanes = this.cloneLanes.get(image);
    if (lanes) return lanes;
    const fanouts = fanoutsIn(lvols, image);
    let next = Math.max(0, ...fanouts.map((f) => f.index)) + 1;
    const ready = fanouts.filter((f) => !f.tmp).sort((a, b) => a.index - b.index);
    const snapshots = [lvolAlias(this.lvs, goldenName(image)), ...ready.map((f) => lvolAlias(this.lvs, f.name))];
    lanes = new CloneLanes(snapshots, this.cfg.cloneLanes, () => this.makeFanout(image, next++), this.log.child({ image }));
    this.cloneLanes.set(image, lanes);
    return lanes;
  }

  /**
   * A fan-out: clone the golden, snapshot that clone (the snapshot appears in one step, with
   * no data of its own, between the golden and the clone), delete the clone.
   */
  private async makeFanout(image: string, n: number): Promise<string> {
    const golden = lvolAlias(this.lvs, goldenName(image));
    const tmp = lvolAlias(this.lvs, fanoutTmpName(image, n));
    const fan = lvolAlias(this.lvs, fanoutName(image, n));
    this.fanoutTmps.add(fanoutTmpName(image, n));
    try {
      await this.snapshotLocks.run(golden, async () => {
        await this.api.bdevLvolClone({ snapshot_name: golden, clone_name: fanoutTmpName(image, n) });
        await this.api.bdevLvolSnapshot({ lvol_name: tmp, snapshot_name: fanoutName(image, n) });
      });
      await this.snapshotLocks.run(fan, () => this.deleteLvol(tmp));
    } finally {
      this.fanoutTmps.delete(fanoutTmpName(image, n));
    }
    this.log.info({ event: 'clone.fanout.created', image, fanout: fan }, 'clone lane added');
    return fan;
  }

  private async cloneDisk(spec: DiskSpec, image: string, lvols: readonly Lvol[]): Promise<ObservedDisk> {
    const log = this.log.child({ disk: spec.id, image });
    const alias = lvolAlias(this.lvs, spec.id);
    const goldenAlias = lvolAlias(this.lvs, goldenName(image));
    const golden = await this.getBdev(goldenAlias);
    if (!golden) throw new BackendError(`disk ${spec.id}: image ${image} is not cached on this node`, 'notFound');
    const goldenBytes = bdevSizeBytes(golden);
    const plan = planCloneSize(spec.capacityBytes, goldenBytes, this.imageSizes.get(image) ?? goldenBytes - this.clusterBytes + 1);
    if (!plan.ok) throw new BackendError(`disk ${spec.id}: ${plan.reason}`, 'invalid');
    let from = goldenAlias;
    try {
      await this.lanesOf(image, lvols).submit((snapshot) => {
        from = snapshot;
        return this.snapshotLocks.run(snapshot, () => this.api.bdevLvolClone({ snapshot_name: snapshot, clone_name: spec.id }));
      });
    } catch (e) {
      if (e instanceof SpdkError && e.kind === 'exists') return this.completeExistingDisk(spec);
      if (e instanceof SpdkError && e.kind === 'notFound' && from !== goldenAlias) {
        // A fan-out that went away (deleted behind our back): find the lanes again, retry.
        this.cloneLanes.delete(image);
        throw new BackendError(`disk ${spec.id}: clone lane ${from} is gone; retrying from the listing`, 'busy', { cause: e });
      }
      throw toBackendError(e, `disk ${spec.id}: cloning ${from}`);
    }
    if (plan.resize) {
      try {
        await this.api.bdevLvolResize({ name: alias, size_in_mib: plan.sizeMiB });
      } catch (e) {
        // Leave nothing half-made: a clone of the wrong size would look finished.
        await this.deleteLvolQuietly(alias, log);
        throw toBackendError(e, `disk ${spec.id}: resizing to ${plan.sizeMiB} MiB`);
      }
    }
    log.info({ event: 'disk.created', source: 'image', sizeMiB: plan.sizeMiB }, 'disk cloned');
    return { id: spec.id, ref: alias, sizeBytes: lvolBytes(plan.sizeMiB, this.clusterBytes), image, dependents: 0, owned: true };
  }

  private async createBlankDisk(spec: DiskSpec): Promise<ObservedDisk> {
    const capacity = spec.capacityBytes;
    if (capacity === undefined || !Number.isFinite(capacity) || capacity <= 0) {
      throw new BackendError(`disk ${spec.id}: a blank disk needs a positive capacityBytes`, 'invalid');
    }
    const sizeMiB = ceilMiB(capacity);
    try {
      await this.api.bdevLvolCreate({ lvol_name: spec.id, size_in_mib: sizeMiB, lvs_name: this.lvs, thin_provision: true });
    } catch (e) {
      if (e instanceof SpdkError && e.kind === 'exists') return this.completeExistingDisk(spec);
      throw toBackendError(e, `disk ${spec.id}: creating a ${sizeMiB} MiB lvol`);
    }
    this.log.info({ event: 'disk.created', disk: spec.id, source: 'blank', sizeMiB }, 'disk created');
    return { id: spec.id, ref: lvolAlias(this.lvs, spec.id), sizeBytes: lvolBytes(sizeMiB, this.clusterBytes), dependents: 0, owned: true };
  }

  /** The disk exists: report it, growing it first if a crash came between clone and resize. */
  private async completeExistingDisk(spec: DiskSpec): Promise<ObservedDisk> {
    const alias = lvolAlias(this.lvs, spec.id);
    let bdev = await this.getBdev(alias);
    if (!bdev) throw new BackendError(`disk ${spec.id}: listed but has no bdev`, 'internal');
    if (spec.capacityBytes !== undefined && bdevSizeBytes(bdev) < spec.capacityBytes) {
      await this.api.bdevLvolResize({ name: alias, size_in_mib: ceilMiB(spec.capacityBytes) }).catch((e: unknown) => {
        throw toBackendError(e, `disk ${spec.id}: growing to ${ceilMiB(spec.capacityBytes ?? 0)} MiB`);
      });
      bdev = (await this.api.bdevGetBdevs({ name: alias }))[0] ?? bdev;
    }
    const info = lvolInfoOf(bdev);
    const image = info?.base_snapshot !== undefined ? imageOfSnapshot(info.base_snapshot) : undefined;
    return {
      id: spec.id,
      ref: alias,
      sizeBytes: bdevSizeBytes(bdev),
      ...(image !== undefined ? { image } : {}),
      dependents: info?.clones?.length ?? 0,
      owned: true,
    };
  }

  deleteDisk(id: string): Promise<void> {
    checkDiskId(id);
    return this.diskLocks.run(id, async () => {
      await this.ready();
      const alias = lvolAlias(this.lvs, id);
      // Deleting a clone changes its snapshot's metadata: queue it with the snapshot's clones.
      const bdev = await this.getBdev(alias);
      const parent = bdev ? lvolInfoOf(bdev)?.base_snapshot : undefined;
      if (parent !== undefined) await this.snapshotLocks.run(lvolAlias(this.lvs, parent), () => this.deleteLvol(alias));
      else await this.deleteLvol(alias);
      this.log.info({ event: 'disk.deleted', disk: id }, 'disk deleted');
    });
  }

  /** notFound counts as done. */
  private async deleteLvol(alias: string): Promise<void> {
    try {
      await this.api.bdevLvolDelete({ name: alias });
    } catch (e) {
      if (e instanceof SpdkError && e.kind === 'notFound') return;
      throw toBackendError(e, `deleting lvol ${alias}`);
    }
  }

  private async deleteLvolQuietly(alias: string, log: Logger): Promise<void> {
    await this.deleteLvol(alias).catch((e: unknown) => {
      log.warn({ event: 'lvol.delete_failed', lvol: alias, err: String(e) }, 'could not delete lvol');
    });
  }

  // ---- controllers --------------------------------------------------------------------------

  ensureController(spec: ControllerSpec): Promise<ObservedController> {
    const { slot } = checkControllerName(spec.name);
    const socketPath = path.join(this.vhostDir, spec.name);
    if (socketPathTooLong(socketPath)) {
      return Promise.reject(new BackendError(`controller ${spec.name}: socket path ${socketPath} is longer than ${MAX_SOCKET_PATH_BYTES} bytes (sun_path)`, 'invalid'));
    }
    return this.controllerLocks.run(spec.name, async () => {
      await this.ready();
      await ensureSlotDir(this.vhostDir, slot);
      const [controllers, bdev] = await Promise.all([this.listControllers(), this.getBdev(spec.diskRef)]);
      if (!bdev) throw new BackendError(`controller ${spec.name}: bdev ${spec.diskRef} does not exist`, 'notFound');
      const existing = controllers.find((c) => c.ctrlr === spec.name);
      if (existing) return this.verifyController(existing, bdev, spec);
      const other = controllers.find((c) => servesBdev(c, bdev));
      if (other) {
        throw new BackendError(`controller ${spec.name}: ${spec.diskRef} is already served by controller ${other.ctrlr}`, 'busy');
      }
      const cpumask = spec.cpumask ?? this.cfg.cpumask;
      try {
        await this.api.vhostCreateBlkController({
          ctrlr: spec.name,
          dev_name: spec.diskRef,
          ...(cpumask !== undefined ? { cpumask } : {}),
          ...(spec.readonly ? { readonly: true } : {}),
        });
      } catch (e) {
        if (!(e instanceof SpdkError && e.kind === 'exists')) throw toBackendError(e, `controller ${spec.name}`);
        const again = (await this.api.vhostGetControllers({ name: spec.name }))[0];
        if (!again) throw toBackendError(e, `controller ${spec.name}`);
        return this.verifyController(again, bdev, spec);
      }
      this.log.info({ event: 'controller.created', ctrlr: spec.name, bdev: spec.diskRef, readonly: spec.readonly }, 'controller created');
      return { name: spec.name, diskRef: spec.diskRef, readonly: spec.readonly, socketPath: path.join(this.vhostDir, spec.name), sessions: 0 };
    });
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
      diskRef: diskRefOf(bdev, this.lvs),
      readonly,
      socketPath: c.socket || path.join(this.vhostDir, c.ctrlr),
      sessions: c.sessions.length,
    };
  }

  deleteController(name: string): Promise<void> {
    checkControllerName(name);
    return this.controllerLocks.run(name, async () => {
      try {
        await this.api.vhostDeleteController({ ctrlr: name });
        this.log.info({ event: 'controller.deleted', ctrlr: name }, 'controller deleted');
      } catch (e) {
        if (e instanceof SpdkError && e.kind === 'notFound') return;
        throw toBackendError(e, `deleting controller ${name}`);
      }
    });
  }

  // ---- live migration (see export.ts) ---------------------------------------------------------

  private get exportContext(): remote.ExportContext {
    return { api: this.api, lvs: this.lvs, log: this.log };
  }

  exportDisk(id: string, opts: ExportOptions): Promise<RemoteDiskRef> {
    return this.diskLocks.run(id, async () => {
      await this.ready();
      return remote.exportDisk(this.exportContext, id, opts);
    });
  }

  unexportDisk(id: string): Promise<void> {
    return this.diskLocks.run(id, () => remote.unexportDisk(this.exportContext, id));
  }

  attachRemoteDisk(ref: RemoteDiskRef, localId: string): Promise<ObservedDisk> {
    return this.diskLocks.run(localId, () => remote.attachRemoteDisk(this.exportContext, ref, localId));
  }

  detachRemoteDisk(localId: string): Promise<void> {
    return this.diskLocks.run(localId, () =>
      remote.detachRemoteDisk(this.exportContext, localId, async (bdev) => (await this.listControllers()).find((c) => servesBdev(c, bdev))?.ctrlr),
    );
  }
}

/** A backend with its own RPC client (reconnecting) on spdk_tgt's socket. */
export function createSpdkBackend(
  opts: Omit<SpdkBackendOptions, 'client' | 'api'> & { socketPath: string; rpcTimeoutMs?: number },
): SpdkBackend {
  const { socketPath, rpcTimeoutMs, ...rest } = opts;
  const client = new SpdkRpcClient({
    socketPath,
    ...(rpcTimeoutMs !== undefined ? { timeoutMs: rpcTimeoutMs } : {}),
    ...(rest.logger ? { logger: rest.logger } : {}),
  });
  return new SpdkBackend({ ...rest, client });
}

/** The VM disks cloned from a golden image's lvol (an import's own lvol is not one). */
function diskClonesOf(golden: Bdev): string[] {
  return (lvolInfoOf(golden)?.clones ?? []).filter((c) => classifyLvol(c).role === 'disk');
}

/** Controllers name their bdev by UUID (v24.01); accept a name or alias too. */
function servesBdev(c: VhostController, bdev: Bdev): boolean {
  const served = c.backend_specific.block?.bdev;
  if (served === undefined || served === null) return false;
  return served === bdev.uuid || served === bdev.name || bdev.aliases.includes(served);
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

interface FanoutLvol {
  name: string;
  index: number;
  tmp: boolean;
}

function fanoutsIn(lvols: ReadonlyArray<{ name: string }>, image: string): FanoutLvol[] {
  return lvols.flatMap((l) => {
    const r = classifyLvol(l.name);
    return r.role === 'fanout' && r.image === image ? [{ name: l.name, index: r.index, tmp: r.tmp }] : [];
  });
}

/** A UUID that is always the same for `key` (an import source must keep its UUID across restarts). */
export function stableUuid(key: string): string {
  const h = createHash('sha256').update(`kubevirt-spdk:${key}`).digest('hex');
  // RFC 4122 layout: version 5 nibble, variant 10xx.
  const variant = ((parseInt(h[16] ?? '0', 16) & 0x3) | 0x8).toString(16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-5${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.stat(file);
    return true;
  } catch {
    return false;
  }
}


function detachOnAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(new BackendError('aborted by caller', 'transport', { cause: signal.reason }));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new BackendError('aborted by caller', 'transport', { cause: signal.reason }));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
