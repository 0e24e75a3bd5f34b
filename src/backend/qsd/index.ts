import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { MAX_SOCKET_PATH_BYTES, socketPathTooLong } from '../../api/limits.js';
import { bdevNameProblem } from '../../api/volumes.js';
import { silentLogger, type Logger } from '../../log.js';
import { fetchImage, removePartFiles, run, type FetchOptions } from '../image-source.js';
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
import { ensureSlotDir } from '../vhost-fs.js';
import { QsdProcess } from './daemon.js';
import {
  checkFileName,
  controllerNameOf,
  exportIdFor,
  nodeNamesFor,
  parseControllerName,
} from './naming.js';
import { QCOW2_PROBE_BYTES, parseQcow2Header, type Qcow2Header } from './qcow2.js';
import { QmpClient, QmpError } from './qmp.js';
import * as nbd from './nbd.js';
import type { ExportOptions, ListenAddress, RemoteDiskRef } from '../remote.js';

/**
 * The qsd driver: golden image file -> qcow2 overlay per disk -> vhost-user-blk export of a
 * qemu-storage-daemon, controlled over QMP.
 *
 * On disk (`stateDir`), which survives a daemon restart:
 *   images/<name>.raw    golden images, mode 0400 (never written; only the daemon reads them)
 *   disks/<id>.qcow2     owned disks: overlays backed by a golden image, or blank qcow2
 *   disks/<id>.link      symlink to `<bdevDir>/<name>`, served as is (a `bdev` volume, not owned)
 * In the daemon, which does not survive a restart: one block node and one export per
 * controller. ObservedDisk.ref is the disk's file path; a controller opens that path.
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
}

const BlockExportInfoSchema = z.array(
  z.object({ id: z.string(), type: z.string(), 'node-name': z.string(), 'shutting-down': z.boolean() }).passthrough(),
);
const BlockNodeInfoSchema = z.array(
  z.object({ 'node-name': z.string().optional(), file: z.string(), ro: z.boolean(), drv: z.string() }).passthrough(),
);
const VersionInfoSchema = z.object({
  qemu: z.object({ major: z.number(), minor: z.number(), micro: z.number() }),
  package: z.string(),
});

const MAX_RESTART_DELAY_MS = 5_000;

/** Maps QMP failures onto the backend's error kinds, keeping QMP's text. */
export function toBackendError(what: string, err: unknown): BackendError {
  if (err instanceof BackendError) return err;
  if (err instanceof QmpError) {
    if (err.kind !== 'command') return new BackendError(`${what}: ${err.message}`, 'transport', { cause: err });
    const d = err.desc;
    const kind: BackendError['kind'] =
      err.errorClass === 'DeviceNotFound' || /no such file|not found|cannot find|failed to find/i.test(d)
        ? 'notFound'
        : /in use|busy|lock|is used/i.test(d)
          ? 'busy'
          : /no space/i.test(d)
            ? 'noSpace'
            : /invalid|must be|parameter|expected|out of range|read-only/i.test(d)
              ? 'invalid'
              : 'internal';
    return new BackendError(`${what}: ${err.message}`, kind, { cause: err });
  }
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const msg = err instanceof Error ? err.message : String(err);
  if (code === 'ENOENT') return new BackendError(`${what}: ${msg}`, 'notFound', { cause: err });
  if (code === 'ENOSPC') return new BackendError(`${what}: ${msg}`, 'noSpace', { cause: err });
  return new BackendError(`${what}: ${msg}`, 'internal', { cause: err });
}

const isGone = (err: unknown): boolean => err instanceof BackendError && err.kind === 'notFound';

export class QsdBackend extends EventEmitter implements StorageBackend {
  readonly kind = 'qsd' as const;
  readonly vhostDir: string;
  private readonly stateDir: string;
  private readonly imagesDir: string;
  private readonly disksDir: string;
  private readonly bdevDir: string | undefined;
  private readonly qmpSocket: string;
  private readonly qemuImg: string;
  private readonly log: Logger;
  private readonly process: QsdProcess | undefined;
  private client: QmpClient | undefined;
  private closing = false;
  private started = false;
  /** Whether 'connected' was the last event emitted: 'disconnected' is sent once per outage. */
  private up = false;
  private restartDelay: number;
  private restartTimer: NodeJS.Timeout | undefined;
  private readonly importing = new Map<string, Promise<ObservedImage>>();
  /** Disk and controller changes run one at a time: they read-then-write shared state. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Where this daemon's NBD server listens (migration exports); a new daemon has none. */
  private nbdServer: ListenAddress | undefined;

  constructor(private readonly opts: QsdBackendOptions) {
    super();
    this.stateDir = path.resolve(opts.stateDir);
    this.vhostDir = path.resolve(opts.vhostDir);
    this.imagesDir = path.join(this.stateDir, 'images');
    this.disksDir = path.join(this.stateDir, 'disks');
    this.bdevDir = opts.bdevDir === undefined ? undefined : path.resolve(opts.bdevDir);
    this.qmpSocket = path.resolve(opts.qmpSocket ?? path.join(this.stateDir, 'qmp.sock'));
    this.qemuImg = opts.qemuImgBinary ?? 'qemu-img';
    this.log = (opts.logger ?? silentLogger).child({ backend: 'qsd' });
    this.restartDelay = opts.restartDelayMs ?? 200;
    if (opts.managed) {
      this.process = new QsdProcess({
        binary: opts.qsdBinary ?? 'qemu-storage-daemon',
        qmpSocket: this.qmpSocket,
        pidFile: path.join(this.stateDir, 'qsd.pid'),
        logger: this.log,
      });
      this.process.on('exit', () => this.onDaemonLost('daemon exited'));
    }
  }

  // ---- lifecycle -------------------------------------------------------------------------

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    await Promise.all([this.imagesDir, this.disksDir, this.vhostDir].map((d) => fs.mkdir(d, { recursive: true })));
    try {
      await this.bringUp();
    } catch (err) {
      await this.close();
      throw toBackendError(`start qemu-storage-daemon (QMP ${this.qmpSocket})`, err);
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    clearTimeout(this.restartTimer);
    this.client?.close();
    this.client = undefined;
    await this.process?.stop();
  }

  private async bringUp(): Promise<void> {
    if (this.process) await this.process.start();
    const client = await QmpClient.connect(this.qmpSocket, { logger: this.log });
    if (this.closing) {
      // close() ran while we were starting: it may have missed the daemon we just made.
      client.close();
      await this.process?.stop();
      return;
    }
    client.on('close', () => {
      if (this.client !== client || this.closing) return;
      this.client = undefined;
      // A managed daemon that lost its monitor is useless: kill it, the exit restarts it.
      if (this.process) void this.process.stop(0);
      else this.onDaemonLost('QMP connection closed');
    });
    this.client = client;
    if (this.process) this.nbdServer = undefined;
    this.restartDelay = this.opts.restartDelayMs ?? 200;
    const v = client.greeting?.version.qemu;
    this.log.info({ event: 'qsd.connected', version: v ? `${v.major}.${v.minor}.${v.micro}` : undefined }, 'connected');
    this.up = true;
    this.emit('connected');
  }

  private onDaemonLost(reason: string): void {
    const client = this.client;
    this.client = undefined;
    client?.close();
    if (this.closing || !this.started) return;
    this.log.warn({ event: 'qsd.disconnected', reason }, 'qemu-storage-daemon lost');
    if (this.up) {
      this.up = false;
      this.emit('disconnected');
    }
    this.scheduleRestart();
  }

  private scheduleRestart(): void {
    if (this.closing || this.restartTimer) return;
    const delay = this.restartDelay;
    this.restartDelay = Math.min(this.restartDelay * 2, MAX_RESTART_DELAY_MS);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      this.bringUp().catch((err: unknown) => {
        this.log.warn({ event: 'qsd.restart.failed', err: (err as Error).message }, 'restart failed; retrying');
        // A managed daemon that started but failed later exits and reschedules by itself.
        if (!this.process?.pid) this.scheduleRestart();
        else void this.process.stop(0);
      });
    }, delay);
  }

  private qmp(): QmpClient {
    if (!this.client || this.client.isClosed) {
      throw new BackendError(`qemu-storage-daemon at ${this.qmpSocket} is not connected`, 'transport');
    }
    return this.client;
  }

  private async exec<T>(command: string, args: Record<string, unknown> | undefined, what: string): Promise<T> {
    try {
      return await this.qmp().execute<T>(command, args);
    } catch (err) {
      throw toBackendError(what, err);
    }
  }

  /**
   * Runs any QMP command on the daemon: the hook for NBD exports (node-local migration) and
   * diagnostics. Node names of a controller's disk come from `nodeNamesFor(name)`.
   */
  qmpExecute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return this.exec<T>(command, args, command);
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }

  async health(): Promise<BackendHealth> {
    try {
      const v = VersionInfoSchema.parse(await this.qmp().execute('query-version', undefined, { timeoutMs: 5_000 }));
      return { ok: true, kind: 'qsd', version: `${v.qemu.major}.${v.qemu.minor}.${v.qemu.micro}` };
    } catch (err) {
      return { ok: false, kind: 'qsd', message: err instanceof Error ? err.message : String(err) };
    }
  }

  // ---- images ----------------------------------------------------------------------------

  private goldenPath(name: string): string {
    return path.join(this.imagesDir, `${checkFileName('image name', name)}.raw`);
  }

  ensureImage(spec: ImageSpec, signal?: AbortSignal): Promise<ObservedImage> {
    let golden: string;
    try {
      golden = this.goldenPath(spec.name);
    } catch (err) {
      return Promise.reject(err);
    }
    const inflight = this.importing.get(spec.name);
    if (inflight) return inflight;
    const job = (async (): Promise<ObservedImage> => {
      const existing = await fs.stat(golden).catch(() => undefined);
      if (existing) {
        // Only a complete, verified import is ever renamed to this name.
        await fs.chmod(golden, 0o400);
        return this.imageInfo(spec.name, existing.size);
      }
      const log = this.log.child({ image: spec.name });
      const got = await fetchImage(spec, golden, {
        ...this.opts.fetch,
        signal,
        mode: 0o400,
        qemuImgBinary: this.qemuImg,
        logger: log,
      });
      return this.imageInfo(spec.name, got.sizeBytes);
    })().finally(() => this.importing.delete(spec.name));
    this.importing.set(spec.name, job);
    return job;
  }

  private async imageInfo(name: string, sizeBytes: number): Promise<ObservedImage> {
    const ref = this.goldenPath(name);
    const disks = await this.listDisks();
    return { name, phase: 'ready', sizeBytes, ref, cloneCount: disks.filter((d) => d.image === name).length };
  }

  async deleteImage(name: string): Promise<void> {
    const golden = this.goldenPath(name);
    const clones = (await this.listDisks()).filter((d) => d.image === name);
    if (clones.length > 0) {
      throw new BackendError(
        `image ${name}: ${clones.length} disk(s) are clones of it (${clones.map((d) => d.id).join(', ')})`,
        'busy',
      );
    }
    await fs.rm(golden, { force: true });
    await removePartFiles(golden);
    this.log.info({ event: 'image.deleted', image: name }, 'image deleted');
  }

  private async listImages(disks: ObservedDisk[]): Promise<ObservedImage[]> {
    const names = await fs.readdir(this.imagesDir).catch(() => [] as string[]);
    const out: ObservedImage[] = [];
    for (const f of names) {
      if (!f.endsWith('.raw')) continue;
      const name = f.slice(0, -'.raw'.length);
      const st = await fs.stat(path.join(this.imagesDir, f)).catch(() => undefined);
      if (!st) continue;
      const ref = path.join(this.imagesDir, f);
      out.push({ name, phase: 'ready', sizeBytes: st.size, ref, cloneCount: disks.filter((d) => d.image === name).length });
    }
    for (const name of this.importing.keys()) {
      if (!out.some((i) => i.name === name)) {
        out.push({ name, phase: 'importing', sizeBytes: 0, ref: this.goldenPath(name), cloneCount: 0 });
      }
    }
    return out;
  }

  // ---- disks -----------------------------------------------------------------------------

  private overlayPath(id: string): string {
    return path.join(this.disksDir, `${checkFileName('disk id', id)}.qcow2`);
  }

  private linkPath(id: string): string {
    return path.join(this.disksDir, `${checkFileName('disk id', id)}.link`);
  }

  private async readHeader(file: string): Promise<Qcow2Header | undefined> {
    const fh = await fs.open(file, 'r');
    try {
      const buf = Buffer.alloc(QCOW2_PROBE_BYTES);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      return parseQcow2Header(buf.subarray(0, bytesRead));
    } finally {
      await fh.close();
    }
  }

  private imageOfBacking(backing: string | undefined): string | undefined {
    if (!backing || path.dirname(backing) !== this.imagesDir || !backing.endsWith('.raw')) return undefined;
    return path.basename(backing, '.raw');
  }

  private async listDisks(): Promise<ObservedDisk[]> {
    const files = await fs.readdir(this.disksDir).catch(() => [] as string[]);
    const out: ObservedDisk[] = [];
    for (const f of files) {
      const full = path.join(this.disksDir, f);
      try {
        if (f.endsWith('.qcow2')) {
          const h = await this.readHeader(full);
          if (!h) continue;
          const image = this.imageOfBacking(h.backingFile);
          out.push({ id: f.slice(0, -6), ref: full, sizeBytes: h.virtualSize, ...(image ? { image } : {}), dependents: 0, owned: true });
        } else if (f.endsWith('.link')) {
          const target = await fs.readlink(full);
          const st = await fs.stat(target).catch(() => undefined);
          out.push({ id: f.slice(0, -5), ref: target, sizeBytes: st?.size ?? 0, dependents: 0, owned: false });
        }
      } catch (err) {
        // A disk deleted while we list it is simply gone.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return out;
  }

  ensureDisk(spec: DiskSpec): Promise<ObservedDisk> {
    return this.serial(() => this.ensureDiskNow(spec));
  }

  private async ensureDiskNow(spec: DiskSpec): Promise<ObservedDisk> {
    const log = this.log.child({ disk: spec.id });
    const what = `disk ${spec.id}`;
    if (spec.capacityBytes !== undefined && (!Number.isSafeInteger(spec.capacityBytes) || spec.capacityBytes <= 0)) {
      throw new BackendError(`${what}: capacityBytes ${spec.capacityBytes} must be a positive integer`, 'invalid');
    }
    if (spec.source.kind === 'bdev') return this.ensureBdevDisk(spec.id, spec.source.bdev);

    const overlay = this.overlayPath(spec.id);
    let backing: string | undefined;
    let capacity = spec.capacityBytes;
    if (spec.source.kind === 'image') {
      backing = this.goldenPath(spec.source.image);
      const st = await fs.stat(backing).catch(() => undefined);
      if (!st) {
        throw new BackendError(`${what}: image ${spec.source.image} is not cached (no golden file ${backing})`, 'notFound');
      }
      capacity ??= st.size;
      if (capacity < st.size) {
        throw new BackendError(
          `${what}: capacity ${capacity} bytes is smaller than image ${spec.source.image} (${st.size} bytes)`,
          'invalid',
        );
      }
    } else if (capacity === undefined) {
      throw new BackendError(`${what}: a blank disk needs capacityBytes`, 'invalid');
    }

    const existing = await this.readHeader(overlay).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null;
      throw toBackendError(what, err);
    });
    if (existing === undefined) {
      throw new BackendError(`${what}: ${overlay} exists but is not a qcow2 image; refusing to touch it`, 'invalid');
    }
    if (existing) {
      if (existing.backingFile !== backing) {
        throw new BackendError(
          `${what}: exists with backing ${existing.backingFile ?? '(none)'}, not ${backing ?? '(none)'}; refusing to replace it`,
          'invalid',
        );
      }
      if (capacity > existing.virtualSize) await this.resize(overlay, capacity, log);
      else if (capacity < existing.virtualSize) {
        log.warn({ event: 'disk.shrink.refused', have: existing.virtualSize, want: capacity }, 'disks never shrink');
      }
      return this.diskInfo(spec.id, overlay);
    }

    // Made under a temporary name and renamed: a crash never leaves a half-made overlay.
    const tmp = `${overlay}.part`;
    await fs.rm(tmp, { force: true });
    const argv = ['create', '-q', '-f', 'qcow2', ...(backing ? ['-F', 'raw', '-b', backing] : []), tmp, String(capacity)];
    const res = await run(this.qemuImg, argv).catch((err: unknown) => {
      throw toBackendError(`${what}: cannot run ${this.qemuImg}`, err);
    });
    if (res.code !== 0) {
      await fs.rm(tmp, { force: true });
      throw new BackendError(`${what}: qemu-img create failed (exit ${res.code}): ${res.stderr.trim()}`, 'internal');
    }
    await fs.rename(tmp, overlay);
    log.info({ event: 'disk.created', source: spec.source.kind, capacity }, 'disk created');
    return this.diskInfo(spec.id, overlay);
  }

  /**
   * `bdev: <name>` is `<bdevDir>/<name>`: one path component, checked against the schema's
   * rule again (the agent may be fed by files, not only by the webhook), never a file of ours.
   */
  private async resolveBdev(what: string, name: string): Promise<string> {
    const problem = bdevNameProblem(name) ?? (name.includes('/') ? 'must be one file name in the bdev directory (no "/")' : undefined);
    if (problem) throw new BackendError(`${what}: bdev "${name}" ${problem}`, 'invalid');
    if (this.bdevDir === undefined) {
      throw new BackendError(`${what}: bdev "${name}": this node serves no bdev volumes (the agent has no --bdev-dir)`, 'invalid');
    }
    const target = path.join(this.bdevDir, name);
    const real = await fs.realpath(target).catch(() => undefined);
    if (real === undefined) throw new BackendError(`${what}: bdev "${name}" does not exist in ${this.bdevDir}`, 'notFound');
    const st = await fs.stat(real);
    if (!st.isFile() && !st.isBlockDevice()) {
      throw new BackendError(`${what}: bdev "${name}" is not a file or block device`, 'invalid');
    }
    if (real === this.stateDir || real.startsWith(`${this.stateDir}${path.sep}`)) {
      throw new BackendError(`${what}: bdev "${name}" resolves into the agent's own state (a golden image or a disk)`, 'invalid');
    }
    return target;
  }

  /** A file a controller may open: one of our overlays, or an entry of the bdev directory. */
  private servableFile(diskRef: string): boolean {
    if (path.dirname(diskRef) === this.disksDir && diskRef.endsWith('.qcow2')) return true;
    return this.bdevDir !== undefined && path.dirname(diskRef) === this.bdevDir && bdevNameProblem(path.basename(diskRef)) === undefined;
  }

  private async ensureBdevDisk(id: string, name: string): Promise<ObservedDisk> {
    const what = `disk ${id}`;
    const target = await this.resolveBdev(what, name);
    const st = await fs.stat(target);
    const link = this.linkPath(id);
    const current = await fs.readlink(link).catch(() => undefined);
    if (current !== undefined && current !== target) {
      throw new BackendError(`${what}: already refers to ${current}, not ${target}`, 'invalid');
    }
    if (current === undefined) {
      const tmp = `${link}.part`;
      await fs.rm(tmp, { force: true });
      await fs.symlink(target, tmp);
      await fs.rename(tmp, link);
    }
    return { id, ref: target, sizeBytes: st.size, dependents: 0, owned: false };
  }

  private async diskInfo(id: string, overlay: string): Promise<ObservedDisk> {
    const h = await this.readHeader(overlay);
    if (!h) throw new BackendError(`disk ${id}: ${overlay} is not a qcow2 image`, 'internal');
    const image = this.imageOfBacking(h.backingFile);
    return { id, ref: overlay, sizeBytes: h.virtualSize, ...(image ? { image } : {}), dependents: 0, owned: true };
  }

  /** Grows a disk; through QMP when an export holds it open (QEMU locks the file). */
  private async resize(overlay: string, capacity: number, log: Logger): Promise<void> {
    const node = this.client ? (await this.blockNodes()).find((n) => n.file === overlay && n.drv === 'qcow2') : undefined;
    if (node?.['node-name']) {
      await this.exec('block_resize', { 'node-name': node['node-name'], size: capacity }, `resize ${overlay}`);
    } else {
      const res = await run(this.qemuImg, ['resize', '-q', '-f', 'qcow2', overlay, String(capacity)]);
      if (res.code !== 0) throw new BackendError(`resize ${overlay}: ${res.stderr.trim()}`, 'internal');
    }
    log.info({ event: 'disk.resized', capacity }, 'disk grown');
  }

  deleteDisk(id: string): Promise<void> {
    return this.serial(async () => {
      const overlay = this.overlayPath(id);
      const link = this.linkPath(id);
      const target = (await fs.readlink(link).catch(() => undefined)) ?? overlay;
      if (this.client) {
        const users = (await this.controllersNow()).filter((c) => c.diskRef === target);
        if (users.length) {
          throw new BackendError(`disk ${id}: served by controller ${users.map((c) => c.name).join(', ')}`, 'busy');
        }
      }
      await Promise.all([overlay, `${overlay}.part`, link, `${link}.part`].map((f) => fs.rm(f, { force: true })));
      this.log.info({ event: 'disk.deleted', disk: id }, 'disk deleted');
    });
  }

  // ---- controllers -----------------------------------------------------------------------

  private async blockNodes(): Promise<z.output<typeof BlockNodeInfoSchema>> {
    return BlockNodeInfoSchema.parse(await this.exec('query-named-block-nodes', { flat: true }, 'query-named-block-nodes'));
  }

  private async exports(): Promise<z.output<typeof BlockExportInfoSchema>> {
    return BlockExportInfoSchema.parse(await this.exec('query-block-exports', undefined, 'query-block-exports'));
  }

  private async controllersNow(): Promise<ObservedController[]> {
    const [exports, nodes] = await Promise.all([this.exports(), this.blockNodes()]);
    const out: ObservedController[] = [];
    for (const e of exports) {
      const name = controllerNameOf(e.id);
      if (!name || e['shutting-down'] || e.type !== 'vhost-user-blk') continue;
      const node = nodes.find((n) => n['node-name'] === e['node-name']);
      const { slot, disk } = parseControllerName(name);
      out.push({
        name,
        diskRef: node?.file ?? '',
        readonly: node?.ro ?? true,
        socketPath: path.join(this.vhostDir, slot, disk),
        sessions: 0,
      });
    }
    return out;
  }

  ensureController(spec: ControllerSpec): Promise<ObservedController> {
    return this.serial(() => this.ensureControllerNow(spec));
  }

  private async ensureControllerNow(spec: ControllerSpec): Promise<ObservedController> {
    const { slot, disk } = parseControllerName(spec.name);
    const what = `controller ${spec.name}`;
    const log = this.log.child({ slot, disk, controller: spec.name });
    const socketPath = path.join(this.vhostDir, slot, disk);
    if (socketPathTooLong(socketPath)) {
      throw new BackendError(`${what}: socket path ${socketPath} is longer than ${MAX_SOCKET_PATH_BYTES} bytes`, 'invalid');
    }
    if (spec.queues !== undefined && (!Number.isInteger(spec.queues) || spec.queues < 1 || spec.queues > 256)) {
      throw new BackendError(`${what}: queues ${spec.queues} must be an integer from 1 to 256`, 'invalid');
    }
    const nodes = nodeNamesFor(spec.name);

    const current = (await this.controllersNow()).find((c) => c.name === spec.name);
    if (current && current.diskRef === spec.diskRef && current.readonly === spec.readonly) return current;
    if (current) {
      log.info({ event: 'controller.replace', was: current }, 'controller differs from spec; recreating');
      await this.deleteControllerNow(spec.name);
    }

    // A node already open on this disk (an NBD export's, or a remote disk's): QEMU's image
    // locks forbid opening the file a second time, and a remote disk has no file at all.
    const openNodes = await this.blockNodes();
    const shared = openNodes.find(
      (n) => n.file === spec.diskRef && n.drv !== 'file' && n['node-name'] !== undefined && n['node-name'] !== nodes.format,
    );
    if (shared?.['node-name'] !== undefined) {
      if (shared.ro && !spec.readonly) throw new BackendError(`${what}: ${spec.diskRef} is open read-only elsewhere`, 'busy');
      return this.addVhostExport(spec, shared['node-name'], socketPath, log);
    }
    // Re-checked here, where the file is opened read-write as root: whatever reached us.
    if (!this.servableFile(spec.diskRef)) {
      throw new BackendError(`${what}: ${spec.diskRef} is neither a disk of this backend nor in the bdev directory; refusing to open it`, 'invalid');
    }
    const st = await fs.stat(spec.diskRef).catch(() => undefined);
    if (!st) throw new BackendError(`${what}: disk ${spec.diskRef} does not exist`, 'notFound');
    // Only our own overlays are qcow2; anything else is served as raw bytes, so that a guest
    // writing a qcow2 header into a raw disk can never make us open other files.
    const format = path.dirname(spec.diskRef) === this.disksDir && spec.diskRef.endsWith('.qcow2') ? 'qcow2' : 'raw';

    // A node of ours left open by an earlier attempt is reused only when it matches the spec.
    const existingNode = openNodes.find((n) => n['node-name'] === nodes.format);
    const reusable = existingNode !== undefined && existingNode.file === spec.diskRef && existingNode.ro === spec.readonly;
    if (existingNode && !reusable) await this.deleteNode(nodes.format);
    if (!reusable) {
      await this.exec(
        'blockdev-add',
        {
          driver: format,
          'node-name': nodes.format,
          'read-only': spec.readonly,
          file: { driver: 'file', 'node-name': nodes.file, filename: spec.diskRef, 'read-only': spec.readonly },
        },
        `${what}: open ${spec.diskRef}`,
      );
    }

    try {
      return await this.addVhostExport(spec, nodes.format, socketPath, log);
    } catch (err) {
      await this.deleteNode(nodes.format).catch(() => undefined);
      throw err;
    }
  }

  private async addVhostExport(spec: ControllerSpec, nodeName: string, socketPath: string, log: Logger): Promise<ObservedController> {
    const what = `controller ${spec.name}`;
    const id = exportIdFor(spec.name);
    await ensureSlotDir(this.vhostDir, path.basename(path.dirname(socketPath)));
    await fs.rm(socketPath, { force: true }); // a socket file left by a daemon that died
    await this.exec(
      'block-export-add',
      {
        type: 'vhost-user-blk',
        id,
        'node-name': nodeName,
        addr: { type: 'unix', path: socketPath },
        writable: !spec.readonly,
        // The guest sees a write-through disk and never flushes: without this, qcow2
        // metadata of acknowledged writes lives only in QSD's memory and a crash of QSD
        // loses them (the e2e restart test caught it).
        writethrough: true,
        ...(spec.queues !== undefined ? { 'num-queues': spec.queues } : {}),
      },
      what,
    );
    log.info({ event: 'controller.created', diskRef: spec.diskRef, readonly: spec.readonly, socketPath }, 'controller created');
    return { name: spec.name, diskRef: spec.diskRef, readonly: spec.readonly, socketPath, sessions: 0 };
  }

  deleteController(name: string): Promise<void> {
    return this.serial(() => this.deleteControllerNow(name));
  }

  private async deleteControllerNow(name: string): Promise<void> {
    const { slot, disk } = parseControllerName(name);
    const id = exportIdFor(name);
    const what = `controller ${name}`;
    const exportNode = (await this.exports()).find((e) => e.id === id)?.['node-name'];
    if (exportNode !== undefined) {
      const deleted = this.qmp()
        .waitForEvent('BLOCK_EXPORT_DELETED', (e) => e.data?.id === id, 10_000)
        .catch(() => undefined);
      try {
        await this.exec('block-export-del', { id }, what);
      } catch (err) {
        // Someone else finished the deletion between our query and the command.
        if (!isGone(err)) throw err;
      }
      await deleted;
      // The event can be missed across a reconnect; the export list is the truth.
      for (let i = 0; i < 200 && (await this.exports()).some((e) => e.id === id); i++) {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    // The node may be shared with a migration export (which keeps it) or be a remote disk.
    await nbd.releaseNode(this.nbdContext, exportNode ?? nodeNamesFor(name).format);
    await fs.rm(path.join(this.vhostDir, slot, disk), { force: true });
    this.log.info({ event: 'controller.deleted', slot, disk, controller: name }, 'controller deleted');
  }

  /** blockdev-del that treats "already gone" as done and waits out a short "in use". */
  private async deleteNode(nodeName: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.exec('blockdev-del', { 'node-name': nodeName }, `close node ${nodeName}`);
        return;
      } catch (err) {
        if (isGone(err)) return;
        if (!(err instanceof BackendError && err.kind === 'busy') || attempt >= 50) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  // ---- live migration (see nbd.ts) -------------------------------------------------------

  private get nbdContext(): nbd.NbdContext {
    return {
      exec: (command, args, what) => this.exec(command, args, what),
      blockNodes: () => this.blockNodes(),
      exports: () => this.exports(),
      diskFile: (id) => this.diskFile(id),
      nbdServer: this.nbdServer,
      setNbdServer: (a) => {
        this.nbdServer = a;
      },
      log: this.log,
    };
  }

  private async diskFile(id: string): Promise<{ file: string; format: 'qcow2' | 'raw' }> {
    const overlay = this.overlayPath(id);
    if (await fs.stat(overlay).then(() => true, () => false)) return { file: overlay, format: 'qcow2' };
    const target = await fs.readlink(this.linkPath(id)).catch(() => undefined);
    if (target !== undefined) return { file: target, format: 'raw' };
    throw new BackendError(`disk ${id} does not exist on this node`, 'notFound');
  }

  exportDisk(id: string, opts: ExportOptions): Promise<RemoteDiskRef> {
    return this.serial(() => nbd.exportDisk(this.nbdContext, id, opts));
  }

  unexportDisk(id: string): Promise<void> {
    return this.serial(() => nbd.unexportDisk(this.nbdContext, id));
  }

  attachRemoteDisk(ref: RemoteDiskRef, localId: string): Promise<ObservedDisk> {
    return this.serial(() => nbd.attachRemoteDisk(this.nbdContext, ref, localId));
  }

  detachRemoteDisk(localId: string): Promise<void> {
    return this.serial(() => nbd.detachRemoteDisk(this.nbdContext, localId));
  }

  // ---- observe ---------------------------------------------------------------------------

  async observe(): Promise<ObservedState> {
    const disks = await this.listDisks();
    const [images, controllers] = await Promise.all([this.listImages(disks), this.controllersNow()]);
    return { images, disks, controllers };
  }
}
