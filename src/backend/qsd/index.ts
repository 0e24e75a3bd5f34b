import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import { silentLogger, type Logger } from '../../log.js';
import type { FetchOptions } from '../image-source.js';
import type { ExportOptions, RemoteDiskRef } from '../remote.js';
import { BackendError } from '../types.js';
import type {
  BackendHealth,
  ControllerSpec,
  DiskHydration,
  DiskSpec,
  ImageExportOptions,
  ImageSpec,
  ObservedController,
  ObservedDisk,
  ObservedImage,
  ObservedState,
  StorageBackend,
} from '../types.js';
import { QsdControllers } from './controllers.js';
import { QsdDisks } from './disks.js';
import { RemoteDisks } from './hydrate.js';
import { QsdImages } from './images.js';
import { QsdLayout } from './layout.js';
import { BootOrder, DEFAULT_BOOT_ORDER, type BootOrderOptions } from './boot-order.js';
import { LazyGoldens, goldenNodeName } from './lazy.js';
import { hydratingGoldenOptions } from './retarget.js';
import * as nbd from './nbd.js';
import { NbdTls } from './nbd-tls.js';
import { QsdSession } from './session.js';

export { toBackendError } from './errors.js';

/**
 * The qsd driver: golden image file -> qcow2 overlay per disk -> vhost-user-blk export of a
 * qemu-storage-daemon, controlled over QMP. One story per file: session.ts (daemon bring-up),
 * images.ts and lazy.ts (goldens, complete or hydrating), disks.ts (overlay files),
 * controllers.ts (vhost-user-blk exports), nbd.ts (migration export/attach), hydrate.ts
 * (disks over another node's export). The on-disk layout is in layout.ts.
 *
 * Concurrency: every change that reads then writes daemon or file state runs in one queue
 * (session.serial); images import concurrently, each name once at a time.
 */

export interface QsdBackendOptions {
  stateDir: string;
  vhostDir: string;
  qsdBinary?: string;
  qemuImgBinary?: string;
  /** Spawn and supervise the daemon (restart it when it dies). */
  managed: boolean;
  /** QMP socket; default `<stateDir>/qmp.sock`. Required to reach an unmanaged daemon elsewhere. */
  qmpSocket?: string;
  logger?: Logger;
  /** First delay before a restart/reconnect; doubles up to 5 s while failures repeat. */
  restartDelayMs?: number;
  /** Passed to fetchImage (timeouts, redirects). */
  fetch?: Pick<FetchOptions, 'timeoutMs' | 'idleTimeoutMs' | 'maxRedirects'>;
  /**
   * The only place `bdev:` volumes come from: `bdev: x` serves `<bdevDir>/x` (a file or block
   * device, or a link to one, put there by the node's admin). Without it no `bdev:` volume is
   * served: a tenant never names a host path.
   */
  bdevDir?: string;
  /**
   * Images from an http(s) origin (format raw) become lazy goldens: usable at once, hydrated
   * in the background, verified after (lazy.ts). Default false: a full import first. An
   * ImageSpec with a `peer` is always lazy.
   */
  lazyImages?: boolean;
  /** First retry delay of a hydration that stopped (source unreachable); doubles up to 30 s. */
  hydrationRetryMs?: number;
  /**
   * Cap on each image's hydration stream in bytes/s (QEMU's block-stream `speed`), so that
   * hydration leaves the source and the disks bandwidth for guests' own reads. Default: none.
   */
  hydrationBytesPerSecond?: number;
  /**
   * The cluster's NBD pre-shared key: a `keys.psk` file (lines `username:hexkey`, not
   * accessible by others) or a directory holding one, the same on every node. With it, the NBD
   * server and every NBD client node use TLS-PSK (nbd-tls.ts); without it NBD is plain and
   * open to any host that reaches the server (a warning at start says so).
   */
  nbdPsk?: string;
  /**
   * Boot-order prefetch of lazy goldens (boot-order.ts): a golden made with no boot profile
   * records one from its first boot (its hydration paused for that window, at most `capMs`);
   * one made with an ImageSpec's `bootProfile` hydrates those ranges first (always). Default:
   * record off (the agent's `--boot-record-window` turns it on); window cap 30 s, closed after
   * 3 s without new reads, or 10 s without any.
   */
  bootOrder?: Partial<BootOrderOptions>;
}

export class QsdBackend extends EventEmitter implements StorageBackend {
  readonly kind = 'qsd' as const;
  readonly vhostDir: string;
  private readonly layout: QsdLayout;
  private readonly session: QsdSession;
  private readonly images: QsdImages;
  private readonly lazy: LazyGoldens;
  private readonly disks: QsdDisks;
  private readonly controllers: QsdControllers;
  private readonly remote: RemoteDisks;
  private readonly nbdTls: NbdTls;
  private readonly nbdPsk: string | undefined;

  constructor(opts: QsdBackendOptions) {
    super();
    this.vhostDir = path.resolve(opts.vhostDir);
    this.layout = new QsdLayout(opts.stateDir, opts.bdevDir);
    const log = (opts.logger ?? silentLogger).child({ backend: 'qsd' });
    const qmpSocket = path.resolve(opts.qmpSocket ?? path.join(this.layout.stateDir, 'qmp.sock'));
    const qemuImg = opts.qemuImgBinary ?? 'qemu-img';
    this.session = new QsdSession({
      qmpSocket,
      ...(opts.managed ? { process: { binary: opts.qsdBinary ?? 'qemu-storage-daemon', pidFile: path.join(this.layout.stateDir, 'qsd.pid') } } : {}),
      restartDelayMs: opts.restartDelayMs ?? 200,
      log,
    });
    this.session.on('connected', () => this.emit('connected'));
    this.session.on('disconnected', () => this.emit('disconnected'));
    const { session, layout } = this;
    this.nbdPsk = opts.nbdPsk;
    const nbdTls = (this.nbdTls = new NbdTls((command, args, what) => session.exec(command, args, what)));
    const retryDelayMs = opts.hydrationRetryMs ?? 500;
    const speedBytesPerSecond = opts.hydrationBytesPerSecond ?? 0;
    const bootOrder = new BootOrder({
      session,
      layout,
      qemuImg,
      log,
      options: { ...DEFAULT_BOOT_ORDER, ...opts.bootOrder },
      goldenNode: goldenNodeName,
      goldenReopenOptions: (name, backing) => hydratingGoldenOptions(goldenNodeName(name), backing),
    });
    this.lazy = new LazyGoldens({ session, layout, qemuImg, log, retryDelayMs, speedBytesPerSecond, listDisks: () => this.disks.list(), nbdTls, bootOrder });
    this.remote = new RemoteDisks({ session, layout, qemuImg, log, retryDelayMs, nbdTls });
    this.images = new QsdImages({
      layout,
      qemuImg,
      log,
      fetch: opts.fetch,
      lazy: this.lazy,
      lazyOrigins: opts.lazyImages ?? false,
      listDisks: () => this.disks.list(),
    });
    this.controllers = new QsdControllers({
      session,
      layout,
      vhostDir: this.vhostDir,
      log,
      nbdContext: () => this.nbdContext,
      backingNodeFor: (diskRef) => this.backingNodeFor(diskRef),
    });
    this.disks = new QsdDisks({
      session,
      layout,
      qemuImg,
      log,
      controllersNow: () => this.controllers.list(),
      goldenFor: (image) => this.images.goldenFor(image),
    });
  }

  // ---- lifecycle -------------------------------------------------------------------------

  async start(): Promise<void> {
    await Promise.all([this.layout.imagesDir, this.layout.disksDir, this.vhostDir].map((d) => fs.mkdir(d, { recursive: true })));
    // Before the daemon: a key that breaks the rules stops the start, with its file named.
    await this.nbdTls.load(this.nbdPsk, path.join(this.layout.stateDir, 'nbd-psk'), this.session.log);
    await this.session.start();
  }

  async close(): Promise<void> {
    this.lazy.close();
    this.remote.close();
    await this.session.close();
  }

  health(): Promise<BackendHealth> {
    return this.session.health();
  }

  /**
   * Runs any QMP command on the daemon: the hook for NBD exports (node-local migration) and
   * diagnostics. Node names of a controller's disk come from `nodeNamesFor(name)`.
   */
  qmpExecute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return this.session.exec<T>(command, args, command);
  }

  // ---- images ----------------------------------------------------------------------------

  ensureImage(spec: ImageSpec, signal?: AbortSignal): Promise<ObservedImage> {
    return this.images.ensure(spec, signal);
  }

  async deleteImage(name: string): Promise<void> {
    // Its export to peers holds the golden's node: it goes first (the agent evicts only what no peer reads).
    if (this.session.connected) await this.unexportImage(name);
    return this.images.delete(name);
  }

  // ---- peer distribution (see nbd.ts) ------------------------------------------------------

  /** Switches a hydrating lazy golden to another source of the same content (retarget.ts). */
  retargetImage(spec: ImageSpec): Promise<ObservedImage> {
    return this.lazy.retarget(spec);
  }

  /** Serves the golden read-only on the daemon's NBD server; with a PSK only key holders read it, `allowedNodes` is not enforced node by node (nbd.ts says why). */
  exportImage(name: string, opts: ImageExportOptions): Promise<RemoteDiskRef> {
    return this.session.serial(async () => {
      const golden = await this.images.goldenFor(name);
      if (!golden) throw new BackendError(`image ${name}: no golden on this node to export`, 'notFound');
      if (golden.problem !== undefined) throw new BackendError(`image ${name}: not exported, it failed: ${golden.problem}`, 'invalid');
      const node = golden.format === 'qcow2' ? await this.lazy.openGoldenNow(name) : undefined;
      return nbd.exportImage(this.nbdContext, name, node !== undefined ? { node } : { file: golden.file }, { listenAddress: opts.listenAddress });
    });
  }

  unexportImage(name: string): Promise<void> {
    return this.session.serial(() => nbd.unexportImage(this.nbdContext, name));
  }

  // ---- disks -----------------------------------------------------------------------------

  ensureDisk(spec: DiskSpec): Promise<ObservedDisk> {
    return this.session.serial(() => this.disks.ensureNow(spec));
  }

  deleteDisk(id: string): Promise<void> {
    return this.session.serial(() => this.disks.deleteNow(id, () => this.remote.forgetNow(id)));
  }

  /** A qcow2 disk's backing node when it must be shared: a lazy golden, or a remote export. Inside serial. */
  private async backingNodeFor(diskRef: string): Promise<string | undefined> {
    const header = await this.layout.readHeader(diskRef).catch(() => undefined);
    const backing = header?.backingFile;
    if (backing === undefined) return undefined;
    if (path.dirname(backing) === this.layout.imagesDir && backing.endsWith('.qcow2')) {
      const image = this.layout.imageOfBacking(backing);
      return image === undefined ? undefined : this.lazy.diskBackingNow(image);
    }
    if (path.dirname(diskRef) === this.layout.disksDir) return this.remote.backingNow(path.basename(diskRef, '.qcow2'));
    return undefined;
  }

  cloneRemoteDisk(ref: RemoteDiskRef, localId: string): Promise<ObservedDisk> {
    return this.session.serial(() => this.remote.cloneNow(ref, localId));
  }

  hydrateDisk(id: string): Promise<DiskHydration> {
    return this.session.serial(async () => {
      const own = await this.remote.hydrateNow(id);
      if (own.state !== 'standalone') return own;
      // A clone of a lazy golden reads through to the golden's source until the golden is whole.
      const { file, format } = await this.disks.file(id);
      const header = format === 'qcow2' ? await this.layout.readHeader(file) : undefined;
      const image = this.layout.imageOfBacking(header?.backingFile);
      const golden = image === undefined ? undefined : await this.lazy.dependence(image);
      return golden ? { id, ...golden } : own;
    });
  }

  // ---- controllers -----------------------------------------------------------------------

  ensureController(spec: ControllerSpec): Promise<ObservedController> {
    return this.session.serial(() => this.controllers.ensureNow(spec));
  }

  deleteController(name: string): Promise<void> {
    return this.session.serial(() => this.controllers.deleteNow(name));
  }

  // ---- live migration (see nbd.ts) -------------------------------------------------------

  private get nbdContext(): nbd.NbdContext {
    return {
      exec: (command, args, what) => this.session.exec(command, args, what),
      blockNodes: () => this.session.blockNodes(),
      exports: () => this.session.exports(),
      diskFile: (id) => this.disks.file(id),
      nbdServer: this.session.nbdServer,
      setNbdServer: (a) => {
        this.session.nbdServer = a;
      },
      backingNodeFor: (file) => this.backingNodeFor(file),
      tls: this.nbdTls,
      log: this.session.log,
    };
  }

  exportDisk(id: string, opts: ExportOptions): Promise<RemoteDiskRef> {
    return this.session.serial(() => nbd.exportDisk(this.nbdContext, id, opts));
  }

  unexportDisk(id: string): Promise<void> {
    return this.session.serial(() => nbd.unexportDisk(this.nbdContext, id));
  }

  attachRemoteDisk(ref: RemoteDiskRef, localId: string): Promise<ObservedDisk> {
    return this.session.serial(() => nbd.attachRemoteDisk(this.nbdContext, ref, localId));
  }

  detachRemoteDisk(localId: string): Promise<void> {
    return this.session.serial(() => nbd.detachRemoteDisk(this.nbdContext, localId));
  }

  // ---- observe ---------------------------------------------------------------------------

  async observe(): Promise<ObservedState> {
    const disks = await this.disks.list();
    const [images, controllers] = await Promise.all([this.images.list(disks), this.controllers.list()]);
    return { images, disks, controllers };
  }
}
