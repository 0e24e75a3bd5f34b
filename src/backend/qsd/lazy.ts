import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import type { Logger } from '../../log.js';
import { run } from '../image-source.js';
import { BackendError, type ImageSpec, type ObservedDisk, type ObservedImage } from '../types.js';
import type { GoldenForClone } from './disks.js';
import { isGone } from './errors.js';
import type { QsdLayout } from './layout.js';
import type { QmpEvent } from './qmp.js';
import type { NbdTls } from './nbd-tls.js';
import { RetryLater } from './retry-later.js';
import type { QsdSession } from './session.js';
import { readLazyRecord, writeLazyRecord, type LazyRecord } from './lazy-record.js';
import { checkRawOrigin, nbdNodeOptions, nbdRef, nbdUri, nodeSize, sizeProblem, sourceOf, type LazySource } from './sources.js';
import { contentSha256 } from './verify.js';
import type { BootOrder } from './boot-order.js';
import { hydratingGoldenOptions, retargetNow } from './retarget.js';

/**
 * Lazy goldens: an image is usable as soon as its source answers. The golden is a local qcow2
 * file whose backing is the source read through QEMU's block layer (the origin over HTTP(S)
 * with the curl driver, or a peer's export over NBD); disks are overlays on it, opened with
 * the golden's one shared node as backing (controllers.ts), so every disk sees what is
 * hydrated. A `block-stream` job copies the source into the golden; when it completes QEMU
 * drops the backing and the golden stands alone.
 *
 * What is verified, and when:
 * - before the golden is usable: the source opens, its size is within the declared size (and
 *   the limits), a raw origin does not start with a qcow2 header (image-inspect's rule); the
 *   backing is ours (the header is written by us with `-u`; the source is always opened as
 *   raw, so nothing in the image can name another file);
 * - after hydration: the golden's content sha256 against the CachedImage's. A mismatch marks
 *   the image failed (persisted): no new clone is made from it. Disks already running keep
 *   running on what they read (their guest's writes are theirs; deleting them would lose
 *   data): the image's phase and message tell the operator, who replaces those VMs.
 *
 * Restarts: `<name>.lazy.json` records the source; on every (re)connect the golden and its
 * source are reopened and the stream restarted, which skips what is already in the golden.
 * A source that cannot be reached pauses hydration (retried with backoff); reads of blocks
 * not yet hydrated fail until it is back, nothing is marked failed for that.
 */


const exists = (f: string): Promise<boolean> => fs.stat(f).then(() => true, () => false);
const hash = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 24);
export const goldenNodeName = (name: string): string => `g${hash(name)}`;
/** Generation 0 is the source the golden was made from; each switch (retarget.ts) opens the next. */
const sourceNodeName = (name: string, generation = 0): string => (generation === 0 ? `s${hash(name)}` : `s${hash(name)}-${generation}`);
/** Every source node an image may have open (a crash mid-switch can leave two). */
const isSourceNodeOf = (name: string, node: string): boolean => node === `s${hash(name)}` || node.startsWith(`s${hash(name)}-`);
const jobIdFor = (name: string): string => `hydrate-g${hash(name)}`;


export interface LazyDeps {
  session: QsdSession;
  layout: QsdLayout;
  qemuImg: string;
  log: Logger;
  /** First retry delay after a failed hydration (doubles up to 30 s). */
  retryDelayMs: number;
  /** Cap on one hydration stream (bytes/s); 0 = as fast as the source gives. */
  speedBytesPerSecond: number;
  listDisks(): Promise<ObservedDisk[]>;
  /** Client credentials for a peer's export (nbd-tls.ts); absent: plain NBD. */
  nbdTls?: NbdTls;
  /** Boot-order prefetch (boot-order.ts): copy-on-read disks, record or replay a boot profile. */
  bootOrder?: BootOrder;
}

export class LazyGoldens {
  private readonly retries: RetryLater;
  private readonly byJob = new Map<string, string>();
  /** Since when each image's source could not be read, and how far its stream had got then. */
  private readonly unreachable = new Map<string, { since: number; offset: number }>();

  constructor(private readonly d: LazyDeps) {
    // A retry while the daemon is down waits for 'connected', which resumes every image.
    this.retries = new RetryLater(d.retryDelayMs, async (name) => {
      if (d.session.connected) {
        await d.session.serial(() => this.ensureRunning(name)).catch((e: unknown) => {
          this.noteUnreachable(name, e);
          throw e;
        });
      }
    });
    d.session.on('qmp-event', (e: QmpEvent) => this.onEvent(e));
    d.session.on('connected', () => void this.resumeAll());
  }

  close(): void {
    this.retries.close();
  }

  private record(name: string): Promise<LazyRecord | undefined> {
    return readLazyRecord(this.d.layout, name);
  }

  private save(rec: LazyRecord): Promise<void> {
    return writeLazyRecord(this.d.layout, rec);
  }

  async has(name: string): Promise<boolean> {
    return (await this.record(name)) !== undefined;
  }

  /**
   * Makes (or finds) the lazy golden; resolves once disks can be cloned from it. Undefined when
   * the origin cannot be read lazily (it ignores byte ranges): the caller imports it in full.
   */
  async ensure(spec: ImageSpec, signal?: AbortSignal): Promise<ObservedImage | undefined> {
    const name = spec.name;
    let rec = await this.record(name);
    if (rec && !(await exists(this.d.layout.lazyGoldenPath(name)))) {
      // Killed between writing the record and renaming the golden into place: make it again.
      await this.d.session.serial(() => this.discardNow(name));
      rec = undefined;
    }
    if (!rec) {
      const source = sourceOf(spec);
      if (source.kind === 'http' && !(await checkRawOrigin(name, source.url, signal)).ranges) {
        this.d.log.info({ event: 'image.lazy.unsupported', image: name }, 'origin serves no byte ranges; importing in full');
        return undefined;
      }
      signal?.throwIfAborted();
      rec = await this.d.session.serial(() => this.create(spec, source));
    } else if (rec.state === 'failed') {
      throw new BackendError(`image ${name}: ${rec.message ?? 'failed'}`, 'checksum');
    } else {
      await this.d.session.serial(() => this.ensureRunning(name));
    }
    return this.info(rec, await this.d.listDisks());
  }

  private async create(spec: ImageSpec, source: LazySource): Promise<LazyRecord> {
    const { session } = this.d;
    const name = spec.name;
    const log = this.d.log.child({ image: name });
    const s = sourceNodeName(name);
    await this.openSource(name, source);
    const size = await nodeSize(session, s);
    const problem = sizeProblem(size, spec.sizeBytes, source);
    if (problem) {
      await session.deleteNode(s);
      throw new BackendError(`image ${name}: ${problem}`, 'invalid');
    }
    const sha256 = 'http' in spec.source ? spec.source.http.sha256 : spec.source.hostPath.sha256;
    const rec: LazyRecord = { version: 1, name, source, sizeBytes: size, ...(sha256 ? { sha256 } : {}), state: 'hydrating' };
    try {
      await this.save(rec);
      await this.makeGolden(name, source, size);
    } catch (e) {
      await this.discardNow(name).catch(() => undefined);
      throw e;
    }
    log.info({ event: 'image.lazy.created', sizeBytes: size, source: source.kind }, 'lazy golden created');
    await this.ensureRunning(name);
    this.d.bootOrder?.begin(spec, goldenNodeName(name), jobIdFor(name), size);
    return rec;
  }

  private async makeGolden(name: string, source: LazySource, size: number): Promise<void> {
    const { layout } = this.d;
    // The backing is written by us, never read from the image: `-u` does not open it.
    const golden = layout.lazyGoldenPath(name);
    const tmp = `${golden}.part`;
    await fs.rm(tmp, { force: true });
    const backing = source.kind === 'http' ? source.url : nbdUri(nbdRef(source.ref));
    const res = await run(this.d.qemuImg, ['create', '-q', '-f', 'qcow2', '-u', '-F', 'raw', '-b', backing, tmp, String(size)]);
    if (res.code !== 0) throw new BackendError(`image ${name}: qemu-img create failed: ${res.stderr.trim()}`, 'internal');
    await fs.rename(tmp, golden);
  }

  private async openSource(name: string, source: LazySource, s = sourceNodeName(name)): Promise<void> {
    if ((await this.d.session.blockNodes()).some((n) => n['node-name'] === s)) return;
    const opts =
      source.kind === 'http'
        ? // readahead 0: the stream asks for exactly what it copies, so the origin serves each byte once.
          { driver: source.url.startsWith('https:') ? 'https' : 'http', 'node-name': s, url: source.url, 'read-only': true, readahead: 0, timeout: 10 }
        : nbdNodeOptions(source.ref, s, (await this.d.nbdTls?.clientArgs()) ?? {});
    try {
      await this.d.session.exec('blockdev-add', opts, `image ${name}: open source`);
    } catch (e) {
      throw new BackendError((e as Error).message, 'transport', { cause: e });
    }
  }

  /**
   * Opens the golden's node (with its source while it hydrates) and starts the stream if none
   * runs. Runs inside session.serial. Returns the golden's node name.
   */
  async openGoldenNow(name: string): Promise<string> {
    const { session, layout } = this.d;
    const g = goldenNodeName(name);
    const golden = layout.lazyGoldenPath(name);
    const nodes = await session.blockNodes();
    if (nodes.some((n) => n['node-name'] === g)) return g;
    const rec = await this.record(name);
    if (!rec) throw new BackendError(`image ${name}: no lazy golden on this node`, 'notFound');
    const header = await layout.readHeader(golden);
    if (!header) throw new BackendError(`image ${name}: ${golden} is not a qcow2 image`, 'internal');
    const standalone = header.backingFile === undefined;
    const source = sourceNodeName(name, rec.generation);
    if (!standalone) await this.openSource(name, rec.source, source);
    const options = standalone
      ? { driver: 'qcow2', 'node-name': g, 'read-only': true, file: { driver: 'file', 'node-name': `${g}-f`, filename: golden, 'read-only': true }, backing: null }
      : { ...hydratingGoldenOptions(g, source), file: { driver: 'file', 'node-name': `${g}-f`, filename: golden, 'read-only': false } };
    await session.exec('blockdev-add', options, `image ${name}: open golden`);
    return g;
  }

  /**
   * Moves a hydrating golden onto another source of the same content (retarget.ts). Resolves
   * with the image as observed after the switch.
   */
  async retarget(spec: ImageSpec): Promise<ObservedImage> {
    const name = spec.name;
    const source = sourceOf(spec);
    // The probe goes over the network: before the queue, which it must not hold.
    if (source.kind === 'http' && !(await checkRawOrigin(name, source.url)).ranges) {
      throw new BackendError(`image ${name}: origin ${source.url} serves no byte ranges; it cannot be read lazily`, 'invalid');
    }
    const rec = await this.d.session.serial(() =>
      retargetNow(
        {
          session: this.d.session,
          log: this.d.log.child({ image: name }),
          goldenNode: goldenNodeName(name),
          sourceNode: (generation) => sourceNodeName(name, generation),
          record: () => this.record(name),
          save: (r) => this.save(r),
          openGolden: () => this.openGoldenNow(name),
          openSource: (s, node) => this.openSource(name, s, node),
          cancelStream: () => this.cancelStream(name),
          sourceNodes: async () => (await this.d.session.blockNodes()).flatMap((n) => (n['node-name'] && isSourceNodeOf(name, n['node-name']) ? [n['node-name']] : [])),
          startStream: async () => {
            this.retries.forget(name);
            this.unreachable.delete(name);
            await this.ensureRunning(name);
          },
        },
        name,
        source,
      ),
    );
    return this.info(rec, await this.d.listDisks());
  }

  /** Stops the image's stream (if one runs) and waits until it is gone. Inside session.serial. */
  private async cancelStream(name: string): Promise<void> {
    const { session } = this.d;
    const job = jobIdFor(name);
    this.byJob.delete(job);
    if (!(await session.blockJob(job))) return;
    await session.exec('block-job-cancel', { device: job, force: true }, `image ${name}: cancel hydration`);
    // A read in flight to a dead NBD peer ends after its reconnect-delay (10 s).
    for (let i = 0; i < 800 && (await session.blockJob(job)); i++) await new Promise((res) => setTimeout(res, 25));
  }

  /** The node a disk of this golden is opened over: the golden, or while it hydrates its copy-on-read filter. */
  async diskBackingNow(name: string): Promise<string> {
    const g = await this.openGoldenNow(name);
    if (!this.d.bootOrder || (await this.hydrated(g))) return g;
    return this.d.bootOrder.diskBackingNow(name, g);
  }

  private async ensureRunning(name: string): Promise<void> {
    const rec = await this.record(name);
    if (!rec || rec.state === 'failed' || rec.state === 'ready') return;
    const g = await this.openGoldenNow(name);
    if (rec.state === 'verifying' || (await this.hydrated(g))) {
      void this.finish(name);
      return;
    }
    const job = jobIdFor(name);
    // Also for a job found running (a daemon that outlived an agent): its end is ours to handle.
    this.byJob.set(job, name);
    const running = await this.d.session.blockJob(job);
    if (running) {
      // Paused for a record or replay that no longer runs (the agent restarted): resume it.
      if (running.paused) await this.d.bootOrder?.adoptPaused(name, job);
      return;
    }
    await this.d.session.exec(
      'block-stream',
      { 'job-id': job, device: g, 'on-error': 'report', ...(this.d.speedBytesPerSecond > 0 ? { speed: this.d.speedBytesPerSecond } : {}) },
      `image ${name}: start hydration`,
    );
    this.d.log.info({ event: 'image.hydrate.start', image: name }, 'hydration started');
  }

  private async hydrated(g: string): Promise<boolean> {
    const info = await this.d.session.exec<Array<{ 'node-name'?: string; image?: { 'backing-filename'?: string } }>>(
      'query-named-block-nodes',
      { flat: true },
      'query-named-block-nodes',
    );
    const node = info.find((n) => n['node-name'] === g);
    return node !== undefined && node.image?.['backing-filename'] === undefined;
  }

  private onEvent(e: QmpEvent): void {
    if (e.event !== 'BLOCK_JOB_COMPLETED') return;
    const job = String(e.data?.device ?? '');
    const name = this.byJob.get(job);
    if (name === undefined) return;
    this.byJob.delete(job);
    const error = e.data?.error;
    if (typeof error === 'string') {
      const offset = typeof e.data?.offset === 'number' ? e.data.offset : 0;
      const was = this.unreachable.get(name);
      // A stream that got further than at the last failure had its source back in between.
      if (!was || offset > was.offset) this.unreachable.set(name, { since: Date.now(), offset });
      this.d.log.warn({ event: 'image.hydrate.paused', image: name, err: error }, 'hydration stopped; retrying');
      this.retryLater(name, error);
      return;
    }
    void this.finish(name);
  }

  private retryLater(name: string, why: string): void {
    this.retries.schedule(name, why);
  }

  private async resumeAll(): Promise<void> {
    const files = await fs.readdir(this.d.layout.imagesDir).catch(() => [] as string[]);
    for (const f of files) {
      if (!f.endsWith('.lazy.json')) continue;
      const name = f.slice(0, -'.lazy.json'.length);
      await this.d.session.serial(() => this.ensureRunning(name)).catch((e: unknown) => {
        this.noteUnreachable(name, e);
        this.retryLater(name, (e as Error).message);
      });
    }
  }

  /**
   * The source could not even be opened (a new daemon, the peer gone): unreachable from now,
   * unless already so. Any stream that then runs clears it.
   */
  private noteUnreachable(name: string, e: unknown): void {
    if (e instanceof BackendError && e.kind === 'transport' && !this.unreachable.has(name)) this.unreachable.set(name, { since: Date.now(), offset: -1 });
  }

  /** The stream is done: drop the source, freeze the golden, verify its content. */
  private async finish(name: string): Promise<void> {
    const { session, layout } = this.d;
    const log = this.d.log.child({ image: name });
    try {
      const rec = await session.serial(async () => {
        const r = await this.record(name);
        if (!r || r.state === 'ready' || r.state === 'failed') return undefined;
        const g = goldenNodeName(name);
        if (!(await this.hydrated(g))) return undefined;
        // The copy-on-read filter holds write permission on the golden: disks move off it first.
        await this.d.bootOrder?.releaseNow(name, g);
        for (const n of (await session.blockNodes()).map((x) => x['node-name'] ?? '').filter((x) => isSourceNodeOf(name, x))) {
          await session.deleteNode(n).catch((e: unknown) => {
            if (!isGone(e)) throw e;
          });
        }
        // Read-only from now on; the reopen also flushes what the stream wrote.
        const ro = (await session.blockNodes()).find((n) => n['node-name'] === g)?.ro;
        if (!ro) {
          await session.exec(
            'blockdev-reopen',
            { options: [{ driver: 'qcow2', 'node-name': g, 'read-only': true, file: `${g}-f`, backing: null }] },
            `image ${name}: reopen golden read-only`,
          );
        }
        const v: LazyRecord = { ...r, state: 'verifying' };
        await this.save(v);
        return v;
      });
      if (!rec) return;
      const golden = layout.lazyGoldenPath(name);
      let next: LazyRecord = { ...rec, state: 'ready' };
      if (rec.sha256 !== undefined) {
        const got = await contentSha256(golden, rec.sizeBytes, this.d.qemuImg);
        if (got !== rec.sha256) {
          next = { ...rec, state: 'failed', message: `sha256 mismatch after hydration: expected ${rec.sha256}, got ${got}; no new disk is cloned from it` };
        }
      }
      await fs.chmod(golden, 0o400);
      await this.save(next);
      this.retries.forget(name);
      this.unreachable.delete(name);
      if (next.state === 'failed') log.error({ event: 'image.hydrate.checksum', err: next.message }, 'hydrated image failed verification');
      else log.info({ event: 'image.hydrate.done', verified: rec.sha256 !== undefined }, 'image hydrated');
    } catch (e) {
      this.retryLater(name, (e as Error).message);
    }
  }

  async goldenFor(name: string): Promise<GoldenForClone | undefined> {
    const rec = await this.record(name);
    if (!rec) return undefined;
    const file = this.d.layout.lazyGoldenPath(name);
    if (!(await fs.stat(file).then(() => true, () => false))) return undefined;
    return { file, format: 'qcow2', sizeBytes: rec.sizeBytes, ...(rec.state === 'failed' ? { problem: rec.message ?? 'failed' } : {}) };
  }

  private async progress(name: string): Promise<number | undefined> {
    if (!this.d.session.connected) return undefined;
    const j = await this.d.session.blockJob(jobIdFor(name)).catch(() => undefined);
    const was = this.unreachable.get(name);
    if (j && was && j.offset > was.offset) this.unreachable.delete(name);
    return j && j.len > 0 ? Math.floor((100 * j.offset) / j.len) : undefined;
  }

  private async info(rec: LazyRecord, disks: ObservedDisk[]): Promise<ObservedImage> {
    const bootProfile = await this.d.bootOrder?.profileOf(rec.name);
    const base = {
      name: rec.name,
      sizeBytes: rec.sizeBytes,
      ref: this.d.layout.lazyGoldenPath(rec.name),
      cloneCount: disks.filter((d) => d.image === rec.name).length,
      ...(bootProfile ? { bootProfile } : {}),
    };
    if (rec.state === 'ready') return { ...base, phase: 'ready' };
    if (rec.state === 'failed') return { ...base, phase: 'failed', ...(rec.message ? { message: rec.message } : {}) };
    if (rec.state === 'verifying') return { ...base, phase: 'hydrating', hydratedPercent: 100, message: 'hydrated; verifying sha256' };
    const pct = await this.progress(rec.name);
    const paused = this.retries.lastError(rec.name);
    const message = pct !== undefined ? `hydrating ${pct}%` : paused !== undefined ? `hydration paused (${paused}); retrying` : 'hydrating';
    const since = this.unreachable.get(rec.name)?.since;
    return { ...base, phase: 'hydrating', hydratedPercent: pct ?? 0, message, ...(since !== undefined ? { sourceUnreachableSinceMs: since } : {}) };
  }

  /**
   * How far a lazy golden still depends on its source: undefined once it stands alone (or if
   * `name` is no lazy golden). 'paused' while the source cannot be reached.
   */
  async dependence(name: string): Promise<{ state: 'hydrating' | 'paused'; percent: number; message?: string } | undefined> {
    const rec = await this.record(name).catch(() => undefined);
    if (!rec || rec.state === 'ready' || rec.state === 'failed') return undefined;
    if (rec.state === 'verifying') return { state: 'hydrating', percent: 100, message: 'verifying sha256' };
    const pct = await this.progress(name);
    const paused = this.retries.lastError(name);
    if (pct === undefined && paused !== undefined) return { state: 'paused', percent: 0, message: paused };
    return { state: 'hydrating', percent: pct ?? 0 };
  }

  async list(disks: ObservedDisk[]): Promise<ObservedImage[]> {
    const files = await fs.readdir(this.d.layout.imagesDir).catch(() => [] as string[]);
    const out: ObservedImage[] = [];
    for (const f of files) {
      if (!f.endsWith('.lazy.json')) continue;
      const rec = await this.record(f.slice(0, -'.lazy.json'.length)).catch(() => undefined);
      if (rec) out.push(await this.info(rec, disks));
    }
    return out;
  }

  /** Stops hydration, closes the golden and its source, removes the files. Callers checked clones. */
  async delete(name: string): Promise<void> {
    const { session, layout } = this.d;
    const golden = layout.lazyGoldenPath(name);
    if (!(await this.has(name)) && !(await fs.stat(golden).then(() => true, () => false))) return;
    this.retries.forget(name);
    this.unreachable.delete(name);
    await session.serial(() => this.discardNow(name));
  }

  /** Stops hydration, closes the nodes, removes golden and record. Inside session.serial. */
  private async discardNow(name: string): Promise<void> {
    const { session, layout } = this.d;
    const golden = layout.lazyGoldenPath(name);
    if (session.connected) {
      await this.cancelStream(name);
      await this.d.bootOrder?.forgetNow(name);
      await session.deleteNode(goldenNodeName(name));
      for (const n of (await session.blockNodes()).map((x) => x['node-name'] ?? '').filter((x) => isSourceNodeOf(name, x))) await session.deleteNode(n);
    }
    await Promise.all([golden, `${golden}.part`, layout.lazyRecordPath(name)].map((f) => fs.rm(f, { force: true })));
  }
}

