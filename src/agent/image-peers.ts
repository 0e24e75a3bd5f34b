import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { RemoteDiskRefSchema, type ListenAddress, type RemoteDiskRef } from '../backend/remote.js';
import type { ImageSpec, ObservedImage, StorageBackend } from '../backend/types.js';
import { silentLogger, type Logger } from '../log.js';
import { writeFileAtomic } from '../fsutil.js';
import { chooseImageSource, chooseWithSeed, ORIGIN, readersOf, servedToPeers, type PeerGolden, type SourceChoice } from './image-sources.js';


/**
 * Node-to-node image distribution (the agent's side, with I/O). Every node serves the goldens
 * it holds read-only to the other nodes of the cluster (backend exportImage); a node without a
 * golden hydrates it from the source image-sources.ts chooses; a peer that fails is skipped and
 * the next one (finally the origin) is tried. A node whose NodeImageCache names this node as
 * its source keeps this node's golden (never evicted nor unexported meanwhile); once hydrated a
 * golden names no source: nothing depends on the peer any more.
 */

/** What this node publishes about one golden (NodeImageCache). */
export interface GoldenInfo {
  source?: string;
  export?: RemoteDiskRef;
  peerReaders?: number;
  hydratedPercent?: number;
}

const describeError = (e: unknown): string => (e instanceof Error ? e.message : String(e));

const SourcesFileSchema = z.record(z.object({ node: z.string(), ref: RemoteDiskRefSchema.optional() }));
type SourcesFile = z.output<typeof SourcesFileSchema>;

export interface ImagePeersOptions {
  /** This node's name. */
  self: string;
  backend: Pick<StorageBackend, 'kind' | 'exportImage' | 'unexportImage' | 'on'>;
  /** Where this node's goldens are exported (the node's address); none: this node serves no peer. */
  exportAddress?: ListenAddress;
  /** The agent's state directory: the source of each hydrating golden survives a restart there. */
  stateDir: string;
  logger?: Logger;
  /**
   * The seed rule (cluster mode): a node that finds no peer announces that it wants the image
   * and waits for the seed's export up to `waitMs` (twice at most, then the origin). Absent or
   * 0: no seeding, a node without a peer reads the origin at once.
   */
  seed?: { waitMs: number; settleMs?: number; ttlMs?: number };
  now?: () => number;
}

/** How long the seed waits for other nodes' announcements to reach it (the informers' latency) unless told (at most half the wait). */
export const SEED_SETTLE_MS = 1_000;
/** Seeds a node gives up on (their export never came) before it reads the origin itself. */
const MAX_GIVE_UPS = 2;

/**
 * The stateful side: the cluster's goldens (set by the cluster view), the source each local
 * golden hydrates from (persisted: after an agent restart the source is still named, so the
 * peer keeps its golden), and this node's exports.
 */
export class ImagePeers {
  private goldens: readonly PeerGolden[] = [];
  private sources: SourcesFile = {};
  private loaded = false;
  private readonly exported = new Map<string, { ref: RemoteDiskRef; allowed: string }>();
  private readonly info = new Map<string, GoldenInfo>();
  /** Keys this node announces it wants (ms it began): phase wanted until the golden shows up, and its time while it imports. */
  private readonly wanted = new Map<string, number>();
  private readonly wakers = new Set<() => void>();
  private readonly listeners = new Set<() => void>();

  constructor(private readonly o: ImagePeersOptions) {
    // A backend that came back may be a new process: its exports are gone.
    o.backend.on('connected', () => this.exported.clear());
  }

  private get log(): Logger {
    return this.o.logger ?? silentLogger;
  }

  private get file(): string {
    return path.join(this.o.stateDir, 'image-sources.json');
  }

  private async load(): Promise<void> {
    if (this.loaded) return;
    this.loaded = true;
    try {
      this.sources = SourcesFileSchema.parse(JSON.parse(await readFile(this.file, 'utf8')));
    } catch {
      this.sources = {};
    }
  }

  private async save(): Promise<void> {
    await writeFileAtomic(this.file, `${JSON.stringify(this.sources, null, 2)}\n`);
  }

  /** The other nodes' goldens (their NodeImageCaches), as the cluster view has them now. */
  setGoldens(goldens: readonly PeerGolden[]): void {
    this.goldens = goldens.filter((g) => g.node !== this.o.self);
    // A node waiting for a seed looks again.
    for (const wake of [...this.wakers]) wake();
  }

  /** Called when what this node announces changed (a new `wanted`): publish it now, not at the round's end. */
  onAnnounce(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Keys this node announces it wants, with the time it began (ms since epoch). */
  wanting(): ReadonlyMap<string, number> {
    return this.wanted;
  }

  private now(): number {
    return (this.o.now ?? Date.now)();
  }

  private get seeding(): boolean {
    // A node that cannot serve others neither becomes a seed nor makes others wait for it.
    return (this.o.seed?.waitMs ?? 0) > 0 && this.o.exportAddress !== undefined && this.o.backend.exportImage !== undefined;
  }

  /** Resolves when the view changed, after `ms`, or when `signal` aborts (then throws). */
  private nap(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        this.wakers.delete(done);
        signal?.removeEventListener('abort', aborted);
      };
      const done = (): void => {
        cleanup();
        resolve();
      };
      const aborted = (): void => {
        cleanup();
        reject(signal?.reason instanceof Error ? signal.reason : Object.assign(new Error('aborted'), { name: 'AbortError' }));
      };
      const timer = setTimeout(done, Math.max(0, ms));
      this.wakers.add(done);
      if (signal?.aborted) aborted();
      else signal?.addEventListener('abort', aborted, { once: true });
    });
  }

  /**
   * The source when seeding is on: a peer at once if there is one; else announce, and wait for
   * the seed (chooseWithSeed) as the view changes. Bounded: the settle time, then at most
   * MAX_GIVE_UPS waits of `waitMs` for seeds whose export never came, then the origin.
   */
  private async chooseSeeded(key: string, transport: RemoteDiskRef['transport'], skip: Set<string>, signal?: AbortSignal): Promise<SourceChoice> {
    const now = this.now();
    const waitMs = this.o.seed?.waitMs ?? 0;
    const settleMs = this.o.seed?.settleMs ?? Math.min(SEED_SETTLE_MS, waitMs / 2);
    const ttlMs = this.o.seed?.ttlMs ?? 3 * waitMs;
    const quick = chooseImageSource({ self: this.o.self, key, goldens: this.goldens, transport, skip });
    if (quick.kind === 'peer') return quick;
    let since = this.wanted.get(key) ?? now;
    if (!this.wanted.has(key)) {
      this.wanted.set(key, since);
      this.log.info({ event: 'image-wanted', image: key }, 'no node holds the image: announced, waiting for a seed');
      for (const l of this.listeners) l();
    }
    let settle = settleMs;
    let givenUp = 0;
    for (;;) {
      const c = chooseWithSeed({ self: this.o.self, key, goldens: this.goldens, transport, skip, seed: { now: this.now(), waitingSince: since, settleMs: settle, waitMs, ttlMs } });
      if (c.kind === 'peer' || c.kind === 'origin') {
        if (c.kind === 'origin') this.log.info({ event: 'image-seed', image: key, waitedMs: this.now() - now }, 'this node is the seed: reading the origin');
        return c;
      }
      if (c.kind === 'give-up') {
        givenUp++;
        this.log.warn({ event: 'image-seed-gave-up', image: key, seed: c.seed, waitedMs: this.now() - now }, 'the seed did not export the image in time');
        if (givenUp >= MAX_GIVE_UPS) return { kind: 'origin' };
        skip.add(c.seed);
        since = this.now();
        // Everyone's announcement is known by now: a new seed need not settle again.
        settle = 0;
        continue;
      }
      await this.nap(c.untilMs - this.now(), signal);
    }
  }

  /** Keys this node must keep: another node hydrates from it. */
  servedToPeers(): string[] {
    return servedToPeers(this.o.self, this.goldens);
  }

  /**
   * Imports `spec` from the best source: a peer's golden, the next peer when one fails, finally
   * the origin. `ensure` is the image cache's call to the backend.
   */
  async ensure(spec: ImageSpec, ensure: (s: ImageSpec) => Promise<ObservedImage>, signal?: AbortSignal): Promise<ObservedImage> {
    try {
      return await this.ensureFrom(spec, ensure, signal);
    } catch (e) {
      // Failed: no longer a candidate seed that others would wait for.
      this.wanted.delete(spec.name);
      throw e;
    }
  }

  private async ensureFrom(spec: ImageSpec, ensure: (s: ImageSpec) => Promise<ObservedImage>, signal?: AbortSignal): Promise<ObservedImage> {
    await this.load();
    const transport = this.o.backend.kind === 'qsd' ? 'nbd' : 'nvmf-tcp';
    // A qcow2 source's sha256 is the file's, not the content a peer serves (converted): it could
    // not be verified after hydration, so qcow2 images always come from their origin.
    const canLazy = spec.format === 'raw' && (this.o.backend.kind === 'qsd' || this.o.backend.exportImage !== undefined);
    const skip = new Set<string>();
    // A golden made before (an agent restart mid-hydration) keeps the source it was made from.
    const recorded = this.sources[spec.name];
    let first: SourceChoice | undefined =
      recorded === undefined ? undefined : recorded.node !== ORIGIN && recorded.ref ? { kind: 'peer', node: recorded.node, ref: recorded.ref, load: 0 } : { kind: 'origin' };
    for (;;) {
      // Only an origin all nodes share (http) is worth a seed: a host path is read on each node.
      const seeded = canLazy && this.seeding && 'http' in spec.source;
      const choice =
        first ??
        (!canLazy
          ? ({ kind: 'origin' } as const)
          : seeded
            ? await this.chooseSeeded(spec.name, transport, skip, signal)
            : chooseImageSource({ self: this.o.self, key: spec.name, goldens: this.goldens, transport, skip }));
      first = undefined;
      if (choice.kind === 'origin') {
        this.sources[spec.name] = { node: ORIGIN };
        await this.save();
        return ensure(spec);
      }
      // Recorded before the golden exists: the peer sees it named and keeps its golden.
      this.sources[spec.name] = { node: choice.node, ref: choice.ref };
      await this.save();
      try {
        const img = await ensure({ ...spec, peer: choice.ref });
        this.log.info({ event: 'image-source', image: spec.name, node: choice.node, load: choice.load }, 'hydrating from a peer');
        return img;
      } catch (e) {
        if ((e as { name?: string }).name === 'AbortError') throw e;
        skip.add(choice.node);
        this.log.warn({ event: 'image-source-failed', image: spec.name, node: choice.node, error: describeError(e) }, 'peer failed as a source; trying the next one');
      }
    }
  }

  /**
   * After a round: exports every usable golden to the other nodes, forgets the source of goldens
   * that stand alone, and records what the NodeImageCache says about each. Never throws.
   */
  async sync(images: readonly ObservedImage[]): Promise<void> {
    await this.load();
    const readers = readersOf(this.o.self, this.goldens);
    const allowed = [...new Set(this.goldens.map((g) => g.node))].sort();
    let changed = false;
    this.info.clear();
    for (const img of images) {
      // The golden exists now: its phase speaks for this node. A full import keeps the time, so
      // others wait for it as the seed, and stop when that time is old (a node that went away).
      if (img.phase !== 'importing') this.wanted.delete(img.name);
      const info: GoldenInfo = {};
      if (img.phase === 'hydrating') {
        const src = this.sources[img.name];
        info.source = src?.node ?? ORIGIN;
        if (img.hydratedPercent !== undefined) info.hydratedPercent = img.hydratedPercent;
      } else if (this.sources[img.name] !== undefined && img.phase === 'ready') {
        delete this.sources[img.name];
        changed = true;
      }
      const r = Math.max(readers.get(img.name) ?? 0, img.peerReaders ?? 0);
      if (r) info.peerReaders = r;
      const usable = img.phase === 'ready' || img.phase === 'hydrating';
      const want = JSON.stringify(allowed);
      if (usable && this.o.exportAddress && this.o.backend.exportImage) {
        const had = this.exported.get(img.name);
        if (had?.allowed === want) info.export = had.ref;
        else {
          try {
            const ref = await this.o.backend.exportImage(img.name, { listenAddress: this.o.exportAddress, allowedNodes: allowed });
            this.exported.set(img.name, { ref, allowed: want });
            info.export = ref;
          } catch (e) {
            this.log.warn({ event: 'image-export-failed', image: img.name, error: describeError(e) }, 'could not export a golden to peers');
          }
        }
      } else if (img.phase === 'failed' && this.exported.has(img.name) && !r) {
        await this.o.backend.unexportImage?.(img.name).catch(() => undefined);
        this.exported.delete(img.name);
      }
      this.info.set(img.name, info);
    }
    for (const k of this.exported.keys()) if (!images.some((i) => i.name === k)) this.exported.delete(k);
    if (changed) await this.save().catch(() => undefined);
  }

  /** What the NodeImageCache says about each local golden, by key (after the last sync). */
  published(): ReadonlyMap<string, GoldenInfo> {
    return this.info;
  }

  // ---- source failover (source-failover.ts) ----------------------------------------------

  /** The other nodes' goldens, and the source each local golden hydrates from now. */
  async failoverView(): Promise<{ goldens: readonly PeerGolden[]; sources: Readonly<SourcesFile> }> {
    await this.load();
    return { goldens: this.goldens, sources: this.sources };
  }

  /**
   * Records the source a golden hydrates from after a switch, before the backend switches (the
   * new peer sees itself named and keeps its golden); undone with the previous one on failure.
   */
  async setSource(name: string, source: { node: string; ref?: RemoteDiskRef }): Promise<void> {
    await this.load();
    this.sources[name] = source.ref ? { node: source.node, ref: source.ref } : { node: source.node };
    await this.save();
  }
}
