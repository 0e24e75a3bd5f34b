import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { RemoteDiskRefSchema, type ListenAddress, type RemoteDiskRef } from '../backend/remote.js';
import type { ImageSpec, ObservedImage, StorageBackend } from '../backend/types.js';
import { silentLogger, type Logger } from '../log.js';
import { writeFileAtomic } from '../fsutil.js';

/**
 * Node-to-node image distribution (the agent's side). Every node serves the goldens it holds
 * read-only to the other nodes of the cluster (backend exportImage); a node without a golden
 * chooses where to hydrate it from: a peer's golden (ready first, then one hydrating straight
 * from the origin), least loaded first, else the origin; a peer that fails is skipped and the
 * next one (finally the origin) is tried. The load of a node is the number of goldens other
 * nodes hydrate from it now, as their NodeImageCaches say (each lazy golden is one hydration
 * stream plus the reads of the disks over it). A node whose NodeImageCache names this node as
 * its source keeps this node's golden (never evicted nor unexported meanwhile); once hydrated a
 * golden names no source: nothing depends on the peer any more.
 */

/** One node's golden of one content key, as that node's NodeImageCache says. */
export interface PeerGolden {
  node: string;
  key: string;
  /** `wanted`: the node needs the image, holds none yet, and waits for a seed (see chooseWithSeed). */
  phase: 'wanted' | 'importing' | 'hydrating' | 'ready' | 'failed';
  /** Phase wanted, or importing as a seed: when the node announced it (ms since epoch, its clock). */
  wantedAt?: number;
  /** Phase wanted or importing: the transport the node would export the golden on (its backend's). */
  transport?: RemoteDiskRef['transport'];
  /** Where other nodes read it (absent: not exported). */
  export?: RemoteDiskRef;
  /** While it hydrates: the node it reads from, or ORIGIN. */
  source?: string;
  /** Readers of this golden as its node publishes them (lazy readers + hydration streams). */
  peerReaders?: number;
}

export const ORIGIN = 'origin';

export type SourceChoice = { kind: 'peer'; node: string; ref: RemoteDiskRef; load: number } | { kind: 'origin' };

/**
 * Node -> how many readers it serves now: the goldens other nodes say they hydrate from it, or
 * what the node itself publishes (its backend may see readers no NodeImageCache names yet),
 * whichever is larger.
 */
export function peerLoads(goldens: readonly PeerGolden[]): Map<string, number> {
  const named = new Map<string, number>();
  const published = new Map<string, number>();
  for (const g of goldens) {
    if (g.peerReaders) published.set(g.node, (published.get(g.node) ?? 0) + g.peerReaders);
    if (g.phase !== 'hydrating' || g.source === undefined || g.source === ORIGIN || g.source === g.node) continue;
    named.set(g.source, (named.get(g.source) ?? 0) + 1);
  }
  const out = new Map<string, number>();
  for (const node of new Set([...named.keys(), ...published.keys()])) out.set(node, Math.max(named.get(node) ?? 0, published.get(node) ?? 0));
  return out;
}

/** Per key: how many other nodes hydrate `node`'s golden of it now (its `peerReaders`). */
export function readersOf(node: string, goldens: readonly PeerGolden[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const g of goldens) if (g.phase === 'hydrating' && g.source === node && g.node !== node) out.set(g.key, (out.get(g.key) ?? 0) + 1);
  return out;
}

/** A stable spread among equally loaded peers, so that nodes starting at once do not all pick one. */
const spread = (self: string, node: string): string => createHash('sha256').update(`${self}\0${node}`).digest('hex');

/**
 * Where `self` hydrates `key` from. Pure. Candidates are other nodes' exported goldens of the
 * key that are ready, or hydrating straight from the origin (one hop: never a chain through a
 * node that itself reads from a peer, so no cycle); of the transport the backend reads;
 * not in `skip` (failed just now). Ready before hydrating, then the least load, then a spread
 * that differs per node. None: the origin.
 */
export function chooseImageSource(input: {
  self: string;
  key: string;
  goldens: readonly PeerGolden[];
  transport: RemoteDiskRef['transport'];
  skip?: ReadonlySet<string>;
}): SourceChoice {
  const loads = peerLoads(input.goldens);
  const candidates = input.goldens
    .filter((g) => g.key === input.key && g.node !== input.self && g.export?.transport === input.transport && !input.skip?.has(g.node))
    .filter((g) => g.phase === 'ready' || (g.phase === 'hydrating' && g.source === ORIGIN))
    .map((g) => ({ g, load: loads.get(g.node) ?? 0, rank: g.phase === 'ready' ? 0 : 1 }))
    .sort((a, b) => a.rank - b.rank || a.load - b.load || spread(input.self, a.g.node).localeCompare(spread(input.self, b.g.node)));
  const best = candidates[0];
  if (!best?.g.export) return { kind: 'origin' };
  return { kind: 'peer', node: best.g.node, ref: best.g.export, load: best.load };
}

/**
 * The seed rule: when several nodes need an image that no node holds, one of them (the seed)
 * reads the origin and the others wait for its export, so the origin serves the image once
 * rather than once per node.
 */
export interface SeedTiming {
  /** Now, ms since epoch. */
  now: number;
  /** When this node began to wait (its announcement, or the last seed given up on). */
  waitingSince: number;
  /** The seed waits this long after announcing before it reads the origin: others' announcements arrive meanwhile. */
  settleMs: number;
  /** A node waits this long for the seed's export; then it gives up on that seed. */
  waitMs: number;
  /** Announcements older than this are ignored: the node that made them went away. */
  ttlMs: number;
}

export type SeedChoice =
  | SourceChoice
  | { kind: 'wait'; seed: string; untilMs: number }
  /** The wait for `seed` is over and its export never came: give up on it (skip it) and choose again. */
  | { kind: 'give-up'; seed: string };

/** Rendezvous rank of `node` for `key`: every node computes the same order from the same names. */
export const seedRank = (key: string, node: string): string => createHash('sha256').update(`seed\0${key}\0${node}`).digest('hex');

/** The highest-ranked node for `key` among `nodes` (undefined: none). */
export function rendezvous(key: string, nodes: Iterable<string>): string | undefined {
  let best: { node: string; rank: string } | undefined;
  for (const node of nodes) {
    const rank = seedRank(key, node);
    if (!best || rank > best.rank || (rank === best.rank && node < best.node)) best = { node, rank };
  }
  return best?.node;
}

/** A live announcement: of a transport this node reads, not older than the TTL (nor from the future). */
const live = (g: PeerGolden, transport: RemoteDiskRef['transport'], t: SeedTiming): boolean =>
  g.wantedAt !== undefined && (g.transport ?? transport) === transport && Math.abs(t.now - g.wantedAt) <= t.ttlMs;

/**
 * Where `self` hydrates `key` from when seeding is on. Pure. A usable peer (chooseImageSource:
 * ready, or hydrating straight from the origin) always wins, at once. Else the seed is chosen
 * among the seeds that read the origin for it now without exporting yet (importing, with a live
 * announcement: a full import), or, when none does, among the nodes that announced they want
 * it (live announcements, and `self`): the
 * highest rendezvous rank of (key, node), so every node picks the same one from the same view
 * without talking. Nodes in `skip` (failed as a source, or given up on) are never the seed.
 * The seed reads the origin once `settleMs` have passed since it began to wait; the others wait
 * for its export until `waitMs` have passed, then give up on it.
 */
export function chooseWithSeed(input: Parameters<typeof chooseImageSource>[0] & { seed: SeedTiming }): SeedChoice {
  const peer = chooseImageSource(input);
  if (peer.kind === 'peer') return peer;
  const t = input.seed;
  const mine = input.goldens.filter((g) => g.key === input.key && g.node !== input.self && !input.skip?.has(g.node));
  const importing = mine.filter((g) => g.phase === 'importing' && live(g, input.transport, t)).map((g) => g.node);
  const wanting = mine.filter((g) => g.phase === 'wanted' && live(g, input.transport, t)).map((g) => g.node);
  const seed = rendezvous(input.key, importing.length ? importing : [input.self, ...wanting]);
  if (seed === undefined || seed === input.self) {
    const until = t.waitingSince + t.settleMs;
    return t.now >= until ? { kind: 'origin' } : { kind: 'wait', seed: input.self, untilMs: until };
  }
  const until = t.waitingSince + t.waitMs;
  return t.now >= until ? { kind: 'give-up', seed } : { kind: 'wait', seed, untilMs: until };
}

/** Keys of this node's goldens that another node hydrates from now: kept until it is done. */
export function servedToPeers(self: string, goldens: readonly PeerGolden[]): string[] {
  return [...readersOf(self, goldens).keys()].sort();
}

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

/** How long the seed waits for other nodes' announcements to reach it (the informers' latency), at most half the wait. */
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
    const settleMs = Math.min(this.o.seed?.settleMs ?? SEED_SETTLE_MS, waitMs / 2);
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
