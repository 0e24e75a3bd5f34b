import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { BootProfileSchema, bootProfileProblem, coalesceBootRanges, rangesBytes, subtractRanges, type BootProfile, type BootRange } from '../../contract/boot-profile.js';
import { readJsonFile, writeFileAtomic } from '../../fsutil.js';
import type { Logger } from '../../log.js';
import { run } from '../image-source.js';
import { BackendError, type ImageSpec } from '../types.js';
import { isGone } from './errors.js';
import type { QsdLayout } from './layout.js';
import type { QsdSession } from './session.js';

/**
 * Boot-order prefetch on lazy goldens (the thesis's boot cache), as QEMU 7.2's block layer
 * allows it:
 *
 * - Copy-on-read on the disk path: while a golden hydrates, its disks' backing is a
 *   `copy-on-read` filter node over the golden, so a block a guest read once is in the golden
 *   afterwards (and the stream skips it). Before the golden is frozen read-only the disks are
 *   re-pointed at the golden itself and the filter goes (it holds write permission on it).
 * - Record: on a node that knows no profile for the image, the stream is paused from the
 *   golden's creation; the window opens with the first disk over it and closes when what the
 *   guests pulled in stopped growing for `quietMs` (or at `capMs`). The boot set is what the
 *   golden's own layer holds then, minus what the stream had copied before the pause. The
 *   allocation is read from the file with `qemu-img map -U` after a reopen of the golden's
 *   node with its own options (which flushes its qcow2 metadata: no QMP command flushes a node).
 * - Replay: on a node given a profile, the stream is paused, the filter node is exported over
 *   FUSE on a file in the state directory (root only) and the profile's ranges are read through
 *   it in order, then the stream resumes. It runs beside the disks: Ready is not delayed.
 *
 * The profile (`images/<name>.boot.json`) stays beside the golden and is published by the agent,
 * so a node that replayed one keeps serving it after the recorder evicted its golden. What goes
 * wrong (the daemon restarts mid-window, FUSE is not allowed) only loses the prefetch: the
 * stream resumes and hydrates in order, as without a profile.
 */

export interface BootOrderOptions {
  /** Record a profile where none is known (default false: the agent turns it on). */
  record: boolean;
  /** The window's cap from the first disk; also how long a golden with no disk waits (ms). */
  capMs: number;
  /** The window closes once the guests' reads stopped adding blocks for this long (ms). */
  quietMs: number;
  /** ... or when no guest read anything this long after the first disk opened (ms). */
  idleMs: number;
  /** How often the golden's allocation is read during the window (ms). */
  pollMs: number;
}

export const DEFAULT_BOOT_ORDER: BootOrderOptions = { record: false, capMs: 30_000, quietMs: 3_000, idleMs: 10_000, pollMs: 500 };

export interface BootOrderDeps {
  session: QsdSession;
  layout: QsdLayout;
  qemuImg: string;
  log: Logger;
  options: BootOrderOptions;
  /** The golden's node name (lazy.ts). */
  goldenNode(name: string): string;
  /** The hydrating golden node's options over `backing` (retarget.ts), for the reopen that flushes it. */
  goldenReopenOptions(name: string, backing: string): Record<string, unknown>;
}

const hash = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 24);
export const copyOnReadNodeName = (name: string): string => `c${hash(name)}`;
const fuseExportId = (name: string): string => `boot.${hash(name)}`;
const CHUNK = 1024 * 1024;

const StoredProfileSchema = z.object({ version: z.literal(1), name: z.string(), origin: z.enum(['recorded', 'replayed']), profile: BootProfileSchema }).strict();
type StoredProfile = z.output<typeof StoredProfileSchema>;

const MapEntrySchema = z.array(z.object({ start: z.number(), length: z.number(), present: z.boolean() }).passthrough());

/** One golden's record or replay in progress. */
interface Work {
  abort: AbortController;
  done: Promise<void>;
  /** Record: resolves when the first disk opens over the golden. */
  firstDisk?: () => void;
}

export class BootOrder {
  private readonly work = new Map<string, Work>();

  constructor(private readonly d: BootOrderDeps) {}

  private profilePath(name: string): string {
    return path.join(this.d.layout.imagesDir, `${path.basename(this.d.layout.lazyRecordPath(name), '.lazy.json')}.boot.json`);
  }

  /** The profile recorded or replayed here, if any (a file that does not parse is no profile: it is only ever written by us, atomically). */
  async profileOf(name: string): Promise<BootProfile | undefined> {
    const res = await readJsonFile(this.profilePath(name), StoredProfileSchema);
    return res?.success ? res.data.profile : undefined;
  }

  private async save(name: string, origin: StoredProfile['origin'], profile: BootProfile): Promise<void> {
    const rec: StoredProfile = { version: 1, name, origin, profile };
    await writeFileAtomic(this.profilePath(name), JSON.stringify(rec), { mode: 0o600 });
  }

  /**
   * The node a disk of a hydrating golden reads through: the copy-on-read filter over it (made
   * on first use). Inside session.serial. A first disk opens a recording window.
   */
  async diskBackingNow(name: string, golden: string): Promise<string> {
    const c = copyOnReadNodeName(name);
    if (!(await this.d.session.blockNodes()).some((n) => n['node-name'] === c)) {
      await this.d.session.exec('blockdev-add', { driver: 'copy-on-read', 'node-name': c, file: golden }, `image ${name}: copy-on-read over the golden`);
    }
    this.work.get(name)?.firstDisk?.();
    return c;
  }

  /**
   * A lazy golden was just made and its stream started (inside session.serial): replays the
   * spec's profile, or records one when none is known. Returns at once; the work runs beside.
   */
  begin(spec: ImageSpec, golden: string, job: string, sizeBytes: number): void {
    if (this.work.has(spec.name)) return;
    const log = this.d.log.child({ image: spec.name });
    let profile: BootProfile | undefined;
    if (spec.bootProfile !== undefined) {
      const problem = bootProfileProblem(spec.bootProfile) ?? (spec.bootProfile.sizeBytes !== sizeBytes ? `bootProfile.sizeBytes: ${spec.bootProfile.sizeBytes} is not the image's size ${sizeBytes}` : undefined);
      if (problem !== undefined) log.warn({ event: 'image.boot.refused', err: problem }, 'boot profile refused; hydrating in order');
      else profile = spec.bootProfile;
    }
    if (profile === undefined && !this.d.options.record) return;
    const abort = new AbortController();
    const w: Work = { abort, done: Promise.resolve() };
    this.work.set(spec.name, w);
    const body = profile !== undefined ? this.replay(spec.name, golden, job, profile, abort.signal, log) : this.record(spec.name, job, sizeBytes, w, log);
    w.done = body
      .catch((e: unknown) => {
        if (!abort.signal.aborted) log.warn({ event: 'image.boot.failed', err: (e as Error).message }, 'boot-order prefetch stopped; hydrating in order');
      })
      .finally(async () => {
        await this.d.session.exec('block-job-resume', { device: job }, `image ${spec.name}: resume hydration`).catch(() => undefined);
        this.work.delete(spec.name);
      });
  }

  private async pause(name: string, job: string, signal: AbortSignal): Promise<void> {
    const { session } = this.d;
    await session.exec('block-job-pause', { device: job }, `image ${name}: pause hydration`);
    // A chunk in flight still lands: the job is quiet once it says paused and not busy.
    for (;;) {
      const j = await session.blockJob(job);
      if (!j || (j.paused && !j.busy)) return;
      await sleep(20, undefined, { signal });
    }
  }

  /**
   * The stream must have stayed paused all through the window: one restarted meanwhile (a
   * source switch, a daemon restart) copies in order and its blocks would pass for boot reads.
   */
  private async stillPaused(name: string, job: string): Promise<void> {
    if ((await this.d.session.blockJob(job))?.paused !== true) {
      throw new BackendError(`image ${name}: hydration ran again during the record window (a source switch or a daemon restart); nothing recorded`, 'internal');
    }
  }

  /** What the golden's own layer holds now: its node reopened (flushed), then its file mapped. */
  async allocated(name: string, signal?: AbortSignal): Promise<BootRange[]> {
    const { session } = this.d;
    await session.serial(async () => {
      // Stopped while queued (the golden may be frozen or gone by now): touch nothing.
      signal?.throwIfAborted();
      // The source the golden reads now (it may have been switched since the golden was opened).
      const backing = childOf(await this.graph(), this.d.goldenNode(name), 'backing');
      if (backing === undefined) throw new BackendError(`image ${name}: the golden has no source any more; nothing to record`, 'internal');
      await session.exec('blockdev-reopen', { options: [this.d.goldenReopenOptions(name, backing)] }, `image ${name}: flush golden`);
    });
    const file = this.d.layout.lazyGoldenPath(name);
    // Backing null: only the golden's own clusters are present; -U: the daemon holds the file.
    const spec = `json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: file }, backing: null })}`;
    const res = await run(this.d.qemuImg, ['map', '-U', '--output=json', spec]);
    if (res.code !== 0) throw new BackendError(`image ${name}: qemu-img map failed: ${res.stderr.trim()}`, 'internal');
    return MapEntrySchema.parse(JSON.parse(res.stdout))
      .filter((e) => e.present)
      .map((e) => ({ offset: e.start, length: e.length }));
  }

  private async record(name: string, job: string, sizeBytes: number, w: Work, log: Logger): Promise<void> {
    const { capMs, quietMs, idleMs, pollMs } = this.d.options;
    const signal = w.abort.signal;
    const opened = new Promise<void>((resolve) => (w.firstDisk = resolve));
    await this.pause(name, job, signal);
    const before = await this.allocated(name, signal);
    const first = await Promise.race([opened.then(() => true), sleep(capMs, undefined, { signal }).then(() => false)]);
    if (!first) {
      log.info({ event: 'image.boot.unrecorded' }, 'no disk opened over the new golden; nothing to record');
      return;
    }
    const start = Date.now();
    let last = rangesBytes(before);
    let grewAt: number | undefined;
    for (;;) {
      await sleep(pollMs, undefined, { signal });
      const now = Date.now();
      const bytes = rangesBytes(await this.allocated(name, signal));
      await this.stillPaused(name, job);
      if (bytes !== last) {
        last = bytes;
        grewAt = now;
      }
      if (now - start >= capMs || (grewAt !== undefined ? now - grewAt >= quietMs : now - start >= idleMs)) break;
    }
    const after = await this.allocated(name, signal);
    await this.stillPaused(name, job);
    const profile = coalesceBootRanges(subtractRanges(after, before), sizeBytes);
    if (!profile) {
      log.info({ event: 'image.boot.unrecorded', windowMs: Date.now() - start }, 'the first boot read nothing new');
      return;
    }
    await this.save(name, 'recorded', profile);
    log.info({ event: 'image.boot.recorded', ranges: profile.ranges.length, bytes: rangesBytes(profile.ranges), windowMs: Date.now() - start }, 'boot profile recorded');
  }

  private async replay(name: string, golden: string, job: string, profile: BootProfile, signal: AbortSignal, log: Logger): Promise<void> {
    const { session, layout } = this.d;
    const started = Date.now();
    await this.pause(name, job, signal);
    await session.serial(async () => {
      signal.throwIfAborted();
      await this.diskBackingNow(name, golden);
    });
    const mount = path.join(layout.imagesDir, `${path.basename(this.profilePath(name), '.boot.json')}.boot-read`);
    const id = fuseExportId(name);
    await fs.writeFile(mount, '', { mode: 0o600 });
    try {
      await session
        .exec('block-export-add', { type: 'fuse', id, 'node-name': copyOnReadNodeName(name), mountpoint: mount, writable: false, 'allow-other': 'off' }, `image ${name}: read path for the boot profile`)
        .catch((e: unknown) => {
          throw new BackendError(`image ${name}: FUSE export for the boot-profile replay refused (the daemon needs /dev/fuse and CAP_SYS_ADMIN): ${(e as Error).message}`, 'internal', { cause: e });
        });
      const fh = await fs.open(mount, 'r');
      try {
        const buf = Buffer.alloc(CHUNK);
        for (const r of profile.ranges) {
          for (let off = r.offset; off < r.offset + r.length; off += CHUNK) {
            signal.throwIfAborted();
            await fh.read(buf, 0, Math.min(CHUNK, r.offset + r.length - off), off);
          }
        }
      } finally {
        await fh.close();
      }
      await this.save(name, 'replayed', profile);
      log.info({ event: 'image.boot.replayed', ranges: profile.ranges.length, bytes: rangesBytes(profile.ranges), ms: Date.now() - started }, 'boot profile hydrated first');
    } finally {
      await this.unexport(name, id);
      await fs.rm(mount, { force: true });
    }
  }

  private async unexport(name: string, id: string): Promise<void> {
    const { session } = this.d;
    if (!session.connected) return;
    await session.exec('block-export-del', { id }, `image ${name}: close the boot-profile read path`).catch((e: unknown) => {
      if (!isGone(e)) throw e;
    });
    for (let i = 0; i < 200 && (await session.exports()).some((e) => e.id === id); i++) await sleep(25);
  }

  /**
   * Before the golden is frozen read-only (inside session.serial): stops any work, re-points
   * every disk over the copy-on-read filter at the golden, then closes the filter.
   */
  async releaseNow(name: string, golden: string): Promise<void> {
    // Not awaited: the work may be queued behind us; aborted, it touches nothing.
    this.work.get(name)?.abort.abort();
    const { session } = this.d;
    const c = copyOnReadNodeName(name);
    if (!session.connected || !(await session.blockNodes()).some((n) => n['node-name'] === c)) return;
    const graph = await this.graph();
    const byId = new Map(graph.nodes.map((n) => [n.id, n.name]));
    const cid = graph.nodes.find((n) => n.name === c)?.id;
    const nodes = await session.blockNodes();
    for (const e of graph.edges.filter((x) => x.child === cid && x.name === 'backing')) {
      const parent = byId.get(e.parent);
      const file = graph.edges.find((x) => x.parent === e.parent && x.name === 'file');
      const fileName = file ? byId.get(file.child) : undefined;
      const info = nodes.find((n) => n['node-name'] === parent);
      if (!parent || !fileName || !info) throw new BackendError(`image ${name}: cannot re-point a disk over the copy-on-read filter (node ${parent ?? e.parent})`, 'internal');
      await session.exec(
        'blockdev-reopen',
        { options: [{ driver: info.drv, 'node-name': parent, file: fileName, backing: golden, 'read-only': info.ro }] },
        `image ${name}: disk node ${parent} reads the golden directly`,
      );
    }
    await session.deleteNode(c);
  }

  /** A job found paused with no record or replay of this process behind it is resumed (inside session.serial). */
  async adoptPaused(name: string, job: string): Promise<void> {
    if (this.work.has(name)) return;
    await this.d.session.exec('block-job-resume', { device: job }, `image ${name}: resume hydration paused by an earlier agent`);
    this.d.log.info({ event: 'image.boot.abandoned', image: name }, 'a record or replay of an earlier agent was cut; hydrating in order');
  }

  private graph(): Promise<BlockGraph> {
    return this.d.session.exec<BlockGraph>('x-debug-query-block-graph', undefined, 'x-debug-query-block-graph');
  }

  /** The golden is going (inside session.serial, callers checked clones): filter, work and profile go too. */
  async forgetNow(name: string): Promise<void> {
    const w = this.work.get(name);
    w?.abort.abort();
    if (this.d.session.connected) {
      await this.unexport(name, fuseExportId(name)).catch(() => undefined);
      await this.d.session.deleteNode(copyOnReadNodeName(name));
    }
    await fs.rm(this.profilePath(name), { force: true });
  }
}

interface BlockGraph {
  nodes: Array<{ id: number; name: string }>;
  edges: Array<{ parent: number; child: number; name: string }>;
}

/** The node name of `parent`'s child edge `edge` (e.g. its backing), if it has one. */
function childOf(graph: BlockGraph, parent: string, edge: string): string | undefined {
  const pid = graph.nodes.find((n) => n.name === parent)?.id;
  const e = graph.edges.find((x) => x.parent === pid && x.name === edge);
  return e === undefined ? undefined : graph.nodes.find((n) => n.id === e.child)?.name;
}
