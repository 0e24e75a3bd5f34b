import { EventEmitter } from 'node:events';
import { chmod, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { ensureSlotDir } from '../../src/backend/vhost-fs.js';

/** Binds a unix socket at `p` and keeps it (unref'd: it never holds a test process open). */
function listenUnix(p: string): Promise<void> {
  const server = net.createServer((c) => c.destroy());
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(p, () => {
      server.unref();
      resolve();
    });
  });
}
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
} from '../../src/backend/types.js';

/**
 * An in-memory StorageBackend for agent tests. It keeps state like a backend would (images,
 * thin clones with clone counts, controllers whose "socket" is a plain file created with a
 * wrong mode so the agent must fix it), and lets a test inject errors, attach vhost sessions,
 * simulate a backend restart (controllers vanish; 'disconnected' then 'connected'), and hook
 * every mutating call (to "crash" the agent between steps).
 */

export type FakeMethod = 'ensureImage' | 'deleteImage' | 'ensureDisk' | 'deleteDisk' | 'ensureController' | 'deleteController';
export const MUTATING: readonly FakeMethod[] = ['ensureImage', 'deleteImage', 'ensureDisk', 'deleteDisk', 'ensureController', 'deleteController'];

interface Fault {
  method: FakeMethod;
  error: () => Error;
  times: number;
  match?: (arg: string) => boolean;
}

export const GiB = 2 ** 30;

export class FakeBackend extends EventEmitter implements StorageBackend {
  readonly kind = 'spdk' as const;
  images = new Map<string, ObservedImage>();
  disks = new Map<string, ObservedDisk & { capacity: number }>();
  controllers = new Map<string, ObservedController>();
  /** Bdevs that exist outside our management (for `bdev:` volumes). */
  bdevs = new Set<string>();
  /** Default size of an imported image when the spec does not say. */
  imageSizeBytes = GiB;
  /** Total thin capacity the pool grants before noSpace. */
  poolBytes = Number.MAX_SAFE_INTEGER;
  /** Wait this long in every call (lets concurrent calls overlap). */
  latencyMs = 0;
  /** Every call, in order: `method arg`. */
  readonly calls: string[] = [];
  /** Runs before and after the effect of every mutating call; a test may throw or never resolve. */
  hook?: (method: FakeMethod, arg: string, when: 'before' | 'after') => Promise<void> | void;
  private faults: Fault[] = [];
  private importsRunning = 0;
  maxConcurrentImports = 0;
  importCount = new Map<string, number>();
  down = false;

  constructor(readonly vhostDir: string) {
    super();
  }

  /** The next `times` calls of `method` (optionally only for a matching argument) fail with `error`. */
  fail(method: FakeMethod, error: () => Error, opts: { times?: number; match?: (arg: string) => boolean } = {}): void {
    this.faults.push({ method, error, times: opts.times ?? Infinity, ...(opts.match ? { match: opts.match } : {}) });
  }

  clearFaults(): void {
    this.faults = [];
  }

  /** A guest connects to the controller. */
  attachSession(name: string): void {
    const c = this.controllers.get(name);
    if (!c) throw new Error(`no controller ${name}`);
    c.sessions++;
  }

  /** spdk_tgt restarts: controllers vanish (lvols come back with their lvstore). */
  async restart(): Promise<void> {
    this.down = true;
    this.emit('disconnected');
    for (const c of this.controllers.values()) await rm(c.socketPath, { force: true });
    this.controllers.clear();
    this.down = false;
    this.emit('connected');
  }

  async start(): Promise<void> {}
  async close(): Promise<void> {}

  async health(): Promise<BackendHealth> {
    return { ok: !this.down, kind: 'spdk', version: 'fake' };
  }

  async observe(): Promise<ObservedState> {
    await this.enter('observe', '');
    return {
      images: [...this.images.values()].map((i) => ({ ...i })),
      disks: [...this.disks.values()].map(({ capacity: _c, ...d }) => ({ ...d })),
      controllers: [...this.controllers.values()].map((c) => ({ ...c })),
    };
  }

  private async enter(method: string, arg: string): Promise<void> {
    this.calls.push(`${method} ${arg}`);
    if (this.latencyMs) await new Promise((r) => setTimeout(r, this.latencyMs));
    if (this.down) throw new BackendError('backend is down', 'transport');
    const f = this.faults.find((x) => x.method === method && x.times > 0 && (!x.match || x.match(arg)));
    if (f) {
      f.times--;
      throw f.error();
    }
  }

  private async mutate<T>(method: FakeMethod, arg: string, effect: () => Promise<T> | T): Promise<T> {
    await this.enter(method, arg);
    await this.hook?.(method, arg, 'before');
    const out = await effect();
    await this.hook?.(method, arg, 'after');
    return out;
  }

  async ensureImage(spec: ImageSpec): Promise<ObservedImage> {
    return this.mutate('ensureImage', spec.name, async () => {
      const have = this.images.get(spec.name);
      if (have && have.phase === 'ready') return { ...have };
      this.importCount.set(spec.name, (this.importCount.get(spec.name) ?? 0) + 1);
      this.importsRunning++;
      this.maxConcurrentImports = Math.max(this.maxConcurrentImports, this.importsRunning);
      try {
        const img: ObservedImage = { name: spec.name, phase: 'ready', sizeBytes: spec.sizeBytes ?? this.imageSizeBytes, ref: `lvs/img-${spec.name}`, cloneCount: 0 };
        await new Promise((r) => setTimeout(r, 5));
        // Idempotent like a real import: an import that finished meanwhile (a background import
        // of an agent the test "crashed") is kept with its clones, not replaced.
        const done = this.images.get(spec.name);
        if (done && done.phase === 'ready') return { ...done };
        this.images.set(spec.name, img);
        return { ...img };
      } finally {
        this.importsRunning--;
      }
    });
  }

  async deleteImage(name: string): Promise<void> {
    return this.mutate('deleteImage', name, () => {
      const img = this.images.get(name);
      if (img && img.cloneCount > 0) throw new BackendError(`image ${name} has clones`, 'busy');
      this.images.delete(name);
    });
  }

  private used(): number {
    let n = 0;
    for (const d of this.disks.values()) n += d.capacity;
    return n;
  }

  async ensureDisk(spec: DiskSpec): Promise<ObservedDisk> {
    return this.mutate('ensureDisk', spec.id, () => {
      const have = this.disks.get(spec.id);
      if (have) return { ...have };
      if (spec.source.kind === 'bdev') {
        if (!this.bdevs.has(spec.source.bdev)) throw new BackendError(`bdev ${spec.source.bdev} does not exist`, 'notFound');
        return { id: spec.id, ref: spec.source.bdev, sizeBytes: 0, dependents: 0, owned: false };
      }
      const capacity = spec.capacityBytes ?? 0;
      if (this.used() + capacity > this.poolBytes) throw new BackendError(`lvstore has no room for ${capacity} bytes`, 'noSpace');
      let image: string | undefined;
      if (spec.source.kind === 'image') {
        const img = this.images.get(spec.source.image);
        if (!img || img.phase !== 'ready') throw new BackendError(`image ${spec.source.image} is not cached`, 'notFound');
        if (capacity < img.sizeBytes) throw new BackendError(`capacity ${capacity} < image size ${img.sizeBytes}`, 'invalid');
        img.cloneCount++;
        image = img.name;
      }
      const d = { id: spec.id, ref: `lvs/${spec.id}`, sizeBytes: capacity, dependents: 0, owned: true, capacity, ...(image ? { image } : {}) };
      this.disks.set(spec.id, d);
      const { capacity: _c, ...out } = d;
      return out;
    });
  }

  async deleteDisk(id: string): Promise<void> {
    return this.mutate('deleteDisk', id, () => {
      const d = this.disks.get(id);
      if (!d) return;
      if (d.image) {
        const img = this.images.get(d.image);
        if (img) img.cloneCount--;
      }
      this.disks.delete(id);
    });
  }

  async ensureController(spec: ControllerSpec): Promise<ObservedController> {
    return this.mutate('ensureController', spec.name, async () => {
      const have = this.controllers.get(spec.name);
      if (have) {
        if (have.diskRef !== spec.diskRef) throw new BackendError(`controller ${spec.name} exists with bdev ${have.diskRef}`, 'invalid');
        return { ...have };
      }
      const known = [...this.disks.values()].some((d) => d.ref === spec.diskRef) || this.bdevs.has(spec.diskRef);
      if (!known) throw new BackendError(`bdev ${spec.diskRef} does not exist`, 'notFound');
      const socketPath = path.join(this.vhostDir, spec.name);
      // The slot directory's rules, as both real backends apply them.
      await ensureSlotDir(this.vhostDir, path.dirname(spec.name));
      // A real unix socket (the agent touches nothing else), with the "wrong" mode, like spdk_tgt running as root makes it.
      await rm(socketPath, { force: true });
      await listenUnix(socketPath);
      await chmod(socketPath, 0o600);
      const c: ObservedController = { name: spec.name, diskRef: spec.diskRef, readonly: spec.readonly, socketPath, sessions: 0 };
      this.controllers.set(spec.name, c);
      return { ...c };
    });
  }

  async deleteController(name: string): Promise<void> {
    return this.mutate('deleteController', name, async () => {
      const c = this.controllers.get(name);
      if (!c) return;
      this.controllers.delete(name);
      await rm(c.socketPath, { force: true });
    });
  }
}
