import { createHash } from 'node:crypto';
import type { RemoteDiskRef } from '../backend/remote.js';

/**
 * Where a node hydrates a golden from (pure): a peer's golden (ready first, then one
 * hydrating straight from the origin), least loaded first, else the origin; with seeding, one
 * node (the seed) reads the origin and the others wait for its export. The load of a node is
 * the number of goldens other nodes hydrate from it now, as their NodeImageCaches say (each
 * lazy golden is one hydration stream plus the reads of the disks over it). ImagePeers
 * (image-peers.ts) runs these choices against the cluster's view.
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
