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
  phase: 'importing' | 'hydrating' | 'ready' | 'failed';
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
}

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
  }

  /** Keys this node must keep: another node hydrates from it. */
  servedToPeers(): string[] {
    return servedToPeers(this.o.self, this.goldens);
  }

  /**
   * Imports `spec` from the best source: a peer's golden, the next peer when one fails, finally
   * the origin. `ensure` is the image cache's call to the backend.
   */
  async ensure(spec: ImageSpec, ensure: (s: ImageSpec) => Promise<ObservedImage>): Promise<ObservedImage> {
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
      const choice = first ?? (canLazy ? chooseImageSource({ self: this.o.self, key: spec.name, goldens: this.goldens, transport, skip }) : ({ kind: 'origin' } as const));
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
