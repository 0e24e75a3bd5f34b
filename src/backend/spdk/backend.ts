import { EventEmitter } from 'node:events';
import { formatZodError } from '../../api/errors.js';
import { backoffMs, sleep, type Backoff } from '../../backoff.js';
import { silentLogger, type Logger } from '../../log.js';
import { SpdkApi } from '../../spdk/api.js';
import { SpdkRpcClient } from '../../spdk/client.js';
import { fetchImage as defaultFetchImage } from '../image-source.js';
import type { ExportOptions, RemoteDiskRef } from '../remote.js';
import {
  BackendError,
  type BackendHealth,
  type ControllerSpec,
  type DiskHydration,
  type DiskSpec,
  type ImageExportOptions,
  type ImageSpec,
  type ObservedController,
  type ObservedDisk,
  type ObservedImage,
  type ObservedState,
  type StorageBackend,
} from '../types.js';
import { SpdkBackendConfigSchema, type SpdkBackendOptions } from './config.js';
import { SpdkContext, type SpdkCapabilities } from './context.js';
import { ControllerStore } from './controllers.js';
import { DiskStore } from './disks.js';
import { toBackendError } from './errors.js';
import * as remote from './export.js';
import { FanoutLanes } from './fanout.js';
import { ImageStore } from './images.js';
import { InstanceMarker } from './instance.js';
import { LazyStore } from './lazy.js';
import { LvstoreKeeper } from './lvstore.js';
import { buildObservedState } from './observe.js';

export { DEFAULT_AIO_BLOCK_SIZE, SpdkBackendConfigSchema, type BaseBdevSpec, type SpdkBackendConfig, type SpdkBackendOptions } from './config.js';
export type { SpdkCapabilities } from './context.js';
export { BASE_RECORD_FILE, stableUuid } from './lvstore.js';

/** How often start() looks for an spdk_tgt that went away while the agent started. */
const START_BACKOFF: Backoff = { initialMs: 50, maxMs: 2_000 };

/**
 * StorageBackend on spdk_tgt: a node-local lvstore caches golden images, disks are thin
 * clones of them, controllers are vhost-user-blk. All state lives in SPDK and is read back
 * by listing; this object only remembers what SPDK cannot tell (imports running now).
 *
 * One part per story, sharing one SpdkContext (API, config, locks, reads):
 *   lvstore.ts      bring-up and recovery after a restart, version detection
 *   images.ts       image import into the lvstore, deletion (fanout.ts: clone lanes)
 *   disks.ts        clone, blank, adopted bdev; resize; delete
 *   controllers.ts  vhost-user-blk controllers
 *   export.ts       live migration: NVMe-oF export and attach
 * This class wires them to the port (../types.ts) and to the RPC client's connection events.
 */
export class SpdkBackend extends EventEmitter implements StorageBackend {
  readonly kind = 'spdk' as const;
  readonly vhostDir: string;
  private readonly ctx: SpdkContext;
  private readonly client: SpdkRpcClient;
  private readonly log: Logger;
  private readonly keeper: LvstoreKeeper;
  private readonly lanes: FanoutLanes;
  private readonly images: ImageStore;
  private readonly disks: DiskStore;
  private readonly controllers: ControllerStore;
  private readonly lazy: LazyStore;
  private readonly instance: InstanceMarker;
  private readonly onConnected = (): void => {
    // A new connection may be a new spdk_tgt: check the lvstore again before the next use.
    this.keeper.reset();
    this.lanes.clear();
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
    const cfg = parsed.data;
    this.vhostDir = cfg.vhostDir;
    this.client = client;
    this.log = (logger ?? silentLogger).child({ component: 'spdk-backend', lvs: cfg.lvstore.name });
    this.ctx = new SpdkContext(api ?? new SpdkApi(client), cfg, this.log);
    this.keeper = new LvstoreKeeper(this.ctx);
    this.lanes = new FanoutLanes(this.ctx);
    this.images = new ImageStore(this.ctx, this.keeper, this.lanes, { fetchImage: fetchImage ?? defaultFetchImage, fetchOptions: fetchOptions ?? {} });
    this.disks = new DiskStore(this.ctx, this.keeper, this.lanes, this.images);
    this.controllers = new ControllerStore(this.ctx, this.keeper);
    this.lazy = new LazyStore(this.ctx, this.keeper);
    this.images.lazy = this.lazy;
    this.keeper.reattachLazySources = () => this.lazy.reattachAll();
    this.instance = new InstanceMarker(this.ctx, this.log);
    client.on('connected', this.onConnected);
    client.on('disconnected', this.onDisconnected);
  }

  async start(): Promise<void> {
    // spdk_tgt may die, and be restarted, while the agent starts: wait for it again (as a
    // reconcile round does) instead of failing the agent's start on a lost connection.
    for (let attempt = 0; ; attempt++) {
      try {
        await this.client.connect();
        await this.ctx.api.frameworkWaitInit().catch((e: unknown) => {
          throw toBackendError(e, 'framework_wait_init');
        });
        await this.keeper.ready();
        // Mark the process at bring-up, so the first health() already names it.
        await this.markInstance();
        this.resumeLazy();
        break;
      } catch (e) {
        const err = toBackendError(e, 'start');
        if (err.kind !== 'transport' || this.ctx.lifetime.signal.aborted) {
          // Nothing may keep the process alive after a failed start (an open RPC socket would).
          await this.close().catch(() => undefined);
          throw err;
        }
        this.log.warn({ event: 'backend.start-retry', attempt, error: err.message }, 'SPDK went away while starting: waiting for it');
        await sleep(backoffMs(attempt + 1, START_BACKOFF));
      }
    }
    this.log.info(
      { event: 'backend.started', clusterBytes: this.ctx.lvstore.clusterBytes, blockSize: this.ctx.lvstore.blockSize, spdk: this.ctx.capabilities?.version },
      'spdk backend ready',
    );
  }

  /** What the connected spdk_tgt supports (known after start()). */
  get caps(): SpdkCapabilities | undefined {
    return this.ctx.capabilities;
  }

  /** Stops running imports and closes the RPC client. */
  async close(): Promise<void> {
    this.ctx.lifetime.abort(new BackendError('backend closed', 'transport'));
    await this.images.settled();
    await this.lazy.settled();
    this.client.off('connected', this.onConnected);
    this.client.off('disconnected', this.onDisconnected);
    await this.client.close();
  }

  async health(): Promise<BackendHealth> {
    try {
      const v = await this.ctx.api.spdkGetVersion({ timeoutMs: 5_000 });
      const instance = await this.markInstance();
      return { ok: true, kind: 'spdk', version: v.version, ...(instance !== undefined ? { instance } : {}) };
    } catch (e) {
      return { ok: false, kind: 'spdk', message: e instanceof Error ? e.message : String(e) };
    }
  }

  /** The spdk_tgt process's id (instance.ts); undefined when it cannot be marked (then every reconnect counts as a restart). */
  private async markInstance(): Promise<string | undefined> {
    try {
      return await this.instance.current();
    } catch (e) {
      this.log.warn({ event: 'backend.instance-unknown', err: e instanceof Error ? e.message : String(e) }, 'cannot mark the spdk_tgt instance; a reconnect will count as a restart');
      return undefined;
    }
  }

  async observe(): Promise<ObservedState> {
    const { ctx } = this;
    await this.keeper.ready();
    const [lvols, bdevs, controllers] = await Promise.all([ctx.listLvols(), ctx.listBdevs(), ctx.listControllers()]);
    this.lanes.tidyLeftovers(lvols);
    this.images.tidyFinishedImports(lvols, bdevs);
    this.resumeLazy();
    await this.lazy.refreshSourceStates();
    const peerReaders = await this.lazy.peerReaders();
    return buildObservedState({
      lazy: this.lazy.imageMessages(),
      peerReaders,
      clusterBytes: ctx.lvstore.clusterBytes,
      lvsName: ctx.lvs,
      vhostDir: this.vhostDir,
      lvols,
      bdevs,
      controllers,
      imports: this.images.progress,
    });
  }

  ensureImage(spec: ImageSpec, signal?: AbortSignal): Promise<ObservedImage> {
    return this.images.ensureImage(spec, signal);
  }

  deleteImage(name: string): Promise<void> {
    return this.images.deleteImage(name);
  }

  ensureDisk(spec: DiskSpec): Promise<ObservedDisk> {
    return this.disks.ensureDisk(spec);
  }

  async deleteDisk(id: string): Promise<void> {
    await this.disks.deleteDisk(id);
    await this.lazy.forgetDisk(id);
  }

  ensureController(spec: ControllerSpec): Promise<ObservedController> {
    return this.controllers.ensureController(spec);
  }

  deleteController(name: string): Promise<void> {
    return this.controllers.deleteController(name);
  }

  // ---- live migration (see export.ts) ---------------------------------------------------------

  private get exportContext(): remote.ExportContext {
    return { api: this.ctx.api, lvs: this.ctx.lvs, log: this.log };
  }

  exportDisk(id: string, opts: ExportOptions): Promise<RemoteDiskRef> {
    return this.ctx.diskLocks.run(id, async () => {
      await this.keeper.ready();
      return remote.exportDisk(this.exportContext, id, opts);
    });
  }

  unexportDisk(id: string): Promise<void> {
    return this.ctx.diskLocks.run(id, () => remote.unexportDisk(this.exportContext, id));
  }

  attachRemoteDisk(ref: RemoteDiskRef, localId: string): Promise<ObservedDisk> {
    return this.ctx.diskLocks.run(localId, () => remote.attachRemoteDisk(this.exportContext, ref, localId));
  }

  // ---- lazy disks and image exports (see lazy.ts) -----------------------------------------------

  /** Hydrations recorded before a restart (of the agent or spdk_tgt) start again, in the background. */
  private resumeLazy(): void {
    void this.lazy.resume().catch((e: unknown) => this.log.warn({ event: 'lazy.resume_failed', err: String(e) }, 'could not resume hydrations'));
  }

  cloneRemoteDisk(ref: RemoteDiskRef, localId: string): Promise<ObservedDisk> {
    return this.ctx.diskLocks.run(localId, () => this.lazy.cloneRemoteDisk(ref, localId));
  }

  hydrateDisk(id: string): Promise<DiskHydration> {
    return this.lazy.hydrateDisk(id, async (image) => {
      const img = (await this.observe()).images.find((i) => i.name === image);
      if (!img || img.phase === 'ready') return undefined;
      const paused = img.message?.startsWith('hydration paused') ?? false;
      return { id, state: paused ? 'paused' : 'hydrating', percent: img.hydratedPercent ?? 0, ...(img.message !== undefined ? { message: img.message } : {}) };
    });
  }

  exportImage(name: string, opts: ImageExportOptions): Promise<RemoteDiskRef> {
    return this.lazy.exportImage(name, opts);
  }

  /**
   * Switches a lazy golden's hydration to another peer's export of the image (retarget.ts: a second
   * path of the same controller, nothing detached). Not to the origin: the golden is bound to
   * the NVMe bdev, which a file's aio bdev cannot join (`invalid`).
   */
  async retargetImage(spec: ImageSpec): Promise<ObservedImage> {
    if (!spec.peer) throw new BackendError(`image ${spec.name}: spdk switches a lazy golden to another peer's export only, not to its origin`, 'invalid');
    await this.lazy.retargetImage(spec.name, spec.peer);
    const img = (await this.observe()).images.find((i) => i.name === spec.name);
    if (!img) throw new BackendError(`image ${spec.name}: not on this node`, 'notFound');
    return img;
  }

  unexportImage(name: string): Promise<void> {
    return this.lazy.unexportImage(name);
  }

  detachRemoteDisk(localId: string): Promise<void> {
    return this.ctx.diskLocks.run(localId, () => remote.detachRemoteDisk(this.exportContext, localId, (bdev) => this.controllers.servingController(bdev)));
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
