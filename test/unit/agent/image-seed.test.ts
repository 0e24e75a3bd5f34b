import { EventEmitter } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ImagePeers, type ImagePeersOptions } from '../../../src/agent/image-peers.js';
import { chooseWithSeed, ORIGIN, rendezvous, type PeerGolden, type SeedTiming } from '../../../src/agent/image-sources.js';
import type { ImageSpec, ObservedImage, RemoteDiskRef } from '../../../src/backend/types.js';
import { nodeImageCacheStatus, peerGoldensOf } from '../../../src/kube/mapping.js';
import { ValidationError } from '../../../src/api/errors.js';
import { parseAgentArgs } from '../../../src/cli/commands/agent.js';

const KEY = `sha256-${'b'.repeat(40)}`;
const T0 = Date.parse('2026-01-01T00:00:00Z');
const ref = (node: string): RemoteDiskRef => ({ transport: 'nbd', address: { kind: 'tcp', host: `10.0.1.${node.length}`, port: 4420 }, exportName: `img.${KEY}`, sizeBytes: 1024 });
const wanted = (node: string, at = T0, extra: Partial<PeerGolden> = {}): PeerGolden => ({ node, key: KEY, phase: 'wanted', wantedAt: at, transport: 'nbd', ...extra });
const held = (node: string, phase: PeerGolden['phase'], extra: Partial<PeerGolden> = {}): PeerGolden => ({ node, key: KEY, phase, export: ref(node), ...extra });
const timing = (now: number, extra: Partial<SeedTiming> = {}): SeedTiming => ({ now, waitingSince: T0, settleMs: 1_000, waitMs: 5_000, ttlMs: 15_000, ...extra });
const decide = (self: string, goldens: PeerGolden[], t: SeedTiming, skip: string[] = []) =>
  chooseWithSeed({ self, key: KEY, goldens, transport: 'nbd', skip: new Set(skip), seed: t });
const nodes = Array.from({ length: 8 }, (_, i) => `node-${i}`);

describe('chooseWithSeed (pure)', () => {
  it('nodes that want one image at once agree on one seed: it alone reads the origin, the others wait for it', () => {
    const all = nodes.map((n) => wanted(n));
    const after = nodes.map((n) => decide(n, all.filter((g) => g.node !== n), timing(T0 + 1_500)));
    const seeds = nodes.filter((_, i) => after[i]?.kind === 'origin');
    expect(seeds).toEqual([rendezvous(KEY, nodes)]);
    for (const c of after) if (c.kind !== 'origin') expect(c).toEqual({ kind: 'wait', seed: seeds[0], untilMs: T0 + 5_000 });
    // The order of the view changes nothing.
    const seed = seeds[0] ?? '';
    expect(decide('node-0', [...all].reverse().filter((g) => g.node !== 'node-0'), timing(T0 + 1_500))).toEqual(after[0]);
    expect(decide(seed, all.filter((g) => g.node !== seed).reverse(), timing(T0 + 1_500))).toEqual({ kind: 'origin' });
  });

  it('the seed waits for the settle time first (announcements still on their way), then reads the origin', () => {
    const seed = rendezvous(KEY, nodes) ?? '';
    const others = nodes.filter((n) => n !== seed).map((n) => wanted(n));
    expect(decide(seed, others, timing(T0 + 200))).toEqual({ kind: 'wait', seed, untilMs: T0 + 1_000 });
    expect(decide(seed, others, timing(T0 + 1_000))).toEqual({ kind: 'origin' });
    // Alone, it is its own seed.
    expect(decide('solo', [], timing(T0 + 999))).toMatchObject({ kind: 'wait', seed: 'solo' });
    expect(decide('solo', [], timing(T0 + 1_000))).toEqual({ kind: 'origin' });
  });

  it('the seed does not depend on when each node announced (a node restarted mid-wait announces again, later: same seed)', () => {
    const seed = rendezvous(KEY, nodes) ?? '';
    const follower = nodes.find((n) => n !== seed) ?? '';
    const early = nodes.filter((n) => n !== follower).map((n, i) => wanted(n, T0 + i * 100));
    const late = nodes.filter((n) => n !== follower).map((n, i) => wanted(n, T0 + 3_000 - i * 100));
    expect(decide(follower, early, timing(T0 + 3_500, { waitingSince: T0 + 3_400 }))).toMatchObject({ kind: 'wait', seed });
    expect(decide(follower, late, timing(T0 + 3_500, { waitingSince: T0 + 3_400 }))).toMatchObject({ kind: 'wait', seed });
  });

  it('different images get different seeds (no one node reads every image)', () => {
    const seeds = new Set(Array.from({ length: 32 }, (_, i) => rendezvous(`sha256-${String(i).padStart(40, '0')}`, nodes)));
    expect(seeds.size).toBeGreaterThan(3);
  });

  it('a ready peer always beats seeding, and so does one hydrating straight from the origin (a seed that went)', () => {
    const seed = rendezvous(KEY, nodes) ?? '';
    const others = nodes.filter((n) => n !== seed).map((n) => wanted(n));
    expect(decide(seed, [...others, held('r', 'ready')], timing(T0 + 2_000))).toMatchObject({ kind: 'peer', node: 'r' });
    expect(decide('node-x', [...others, held('h', 'hydrating', { source: ORIGIN })], timing(T0))).toMatchObject({ kind: 'peer', node: 'h' });
    // One hop: a node that hydrates from a peer is no source, and no seed either.
    const chained = held('c', 'hydrating', { source: 'h' });
    expect(decide('solo', [chained], timing(T0 + 1_000))).toEqual({ kind: 'origin' });
  });

  it('expired announcements are ignored (the node went away), and so are ones from far in the future', () => {
    const stale = nodes.map((n) => wanted(n, T0 - 16_000));
    // Every other announcement is older than the TTL: this node is alone, hence the seed.
    expect(decide('late', stale, timing(T0 + 1_000))).toEqual({ kind: 'origin' });
    const future = nodes.map((n) => wanted(n, T0 + 60_000));
    expect(decide('late', future, timing(T0 + 1_000))).toEqual({ kind: 'origin' });
    // Within the TTL they count.
    const fresh = nodes.map((n) => wanted(n, T0 - 14_000));
    const seed = rendezvous(KEY, [...nodes, 'late']);
    if (seed !== 'late') expect(decide('late', fresh, timing(T0 + 1_000))).toMatchObject({ kind: 'wait', seed });
  });

  it('announcements of another transport (a node of the other backend) are not waited for', () => {
    const other = nodes.map((n) => wanted(n, T0, { transport: 'nvmf-tcp' }));
    expect(decide('q', other, timing(T0 + 1_000))).toEqual({ kind: 'origin' });
  });

  it('a follower gives up on a seed whose export never came; with it skipped, the next seed is chosen', () => {
    const all = nodes.map((n) => wanted(n));
    const seed = rendezvous(KEY, nodes) ?? '';
    const follower = nodes.find((n) => n !== seed) ?? '';
    const view = all.filter((g) => g.node !== follower);
    expect(decide(follower, view, timing(T0 + 4_999))).toMatchObject({ kind: 'wait', seed });
    expect(decide(follower, view, timing(T0 + 5_000))).toEqual({ kind: 'give-up', seed });
    const next = rendezvous(KEY, nodes.filter((n) => n !== seed));
    const again = decide(follower, view, timing(T0 + 5_000, { waitingSince: T0 + 5_000, settleMs: 0 }), [seed]);
    expect(again).toEqual(next === follower ? { kind: 'origin' } : { kind: 'wait', seed: next, untilMs: T0 + 10_000 });
  });

  it('a node that failed as a source, or whose golden failed, is never the seed', () => {
    const seed = rendezvous(KEY, nodes) ?? '';
    const follower = nodes.find((n) => n !== seed) ?? '';
    const view = nodes.filter((n) => n !== follower && n !== seed).map((n) => wanted(n));
    const failed = [...view, held(seed, 'failed')];
    const without = rendezvous(KEY, nodes.filter((n) => n !== seed));
    const c = decide(follower, failed, timing(T0 + 1_000));
    expect(c.kind === 'origin' ? follower : c.kind === 'wait' ? c.seed : c.kind).toBe(without);
    const skipped = decide(follower, [...view, wanted(seed)], timing(T0 + 1_000), [seed]);
    expect(skipped.kind === 'origin' ? follower : skipped.kind === 'wait' ? skipped.seed : skipped.kind).toBe(without);
  });

  it('a seed already importing the image from the origin (a full import, no export yet) is the one everyone waits for, until its announcement is old', () => {
    const importing = (at: number) => held('imp', 'importing', { wantedAt: at, transport: 'nbd' });
    const c = decide('w', [importing(T0), wanted('zz')], timing(T0 + 1_000));
    expect(c).toEqual({ kind: 'wait', seed: 'imp', untilMs: T0 + 5_000 });
    expect(decide('w', [importing(T0)], timing(T0 + 5_000))).toEqual({ kind: 'give-up', seed: 'imp' });
    // A node that went away mid-import (its entry stays behind), or an import that was no seed's: not waited for.
    expect(decide('w', [importing(T0 - 16_000)], timing(T0 + 1_000))).toEqual({ kind: 'origin' });
    expect(decide('w', [held('imp', 'importing')], timing(T0 + 1_000))).toEqual({ kind: 'origin' });
  });
});

describe('wanted in the NodeImageCache', () => {
  it('is published per CachedImage name with its time, read back by the other nodes, and gone once the golden exists', () => {
    const backend = { kind: 'qsd' as const };
    const none = nodeImageCacheStatus({ backend, images: [] } as never, new Date(T0).toISOString(), { names: { [KEY]: ['base', 'base-copy'] }, wanted: new Map([[KEY, T0]]) });
    expect(none.images).toEqual([
      { name: 'base', key: KEY, phase: 'wanted', wantedAt: new Date(T0).toISOString() },
      { name: 'base-copy', key: KEY, phase: 'wanted', wantedAt: new Date(T0).toISOString() },
    ]);
    expect(none.summary).toBe('base[wanted], base-copy[wanted]');
    const read = peerGoldensOf([{ metadata: { name: 'n1' }, status: none }]);
    expect(read).toEqual([{ node: 'n1', key: KEY, phase: 'wanted', wantedAt: T0, transport: 'nbd' }]);
    const img = { name: KEY, phase: 'hydrating', sizeBytes: 1024, cloneCount: 0, ref: 'x' };
    const holding = nodeImageCacheStatus({ backend, images: [img] } as never, new Date(T0).toISOString(), { names: { [KEY]: ['base'] }, wanted: new Map([[KEY, T0]]) });
    expect(holding.images).toEqual([expect.objectContaining({ name: 'base', phase: 'hydrating' })]);
    expect(holding.images[0]?.wantedAt).toBeUndefined();
    // A seed's full import keeps its time: the others wait for it, not for ever.
    const importing = nodeImageCacheStatus({ backend, images: [{ ...img, phase: 'importing' }] } as never, new Date(T0).toISOString(), { names: { [KEY]: ['base'] }, wanted: new Map([[KEY, T0]]) });
    expect(peerGoldensOf([{ metadata: { name: 'n1' }, status: importing }])).toEqual([expect.objectContaining({ node: 'n1', phase: 'importing', wantedAt: T0, transport: 'nbd' })]);
  });

  it('a malformed wantedAt is dropped with its entry, never the node', () => {
    const read = peerGoldensOf([{ metadata: { name: 'n1' }, status: { backend: 'qsd', images: [{ name: 'a', key: KEY, phase: 'wanted', wantedAt: 'yesterday' }, { name: 'b', key: 'k2', phase: 'ready' }] } }]);
    expect(read.map((g) => g.key)).toEqual(['k2']);
  });
});

describe('ImagePeers with the seed rule', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'seed-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const spec: ImageSpec = { name: KEY, source: { http: { url: 'http://origin.invalid/i.raw', sha256: 'b'.repeat(64) } }, format: 'raw' };
  const ok = (s: ImageSpec): ObservedImage => ({ name: s.name, phase: 'hydrating', sizeBytes: 1024, ref: 'x', cloneCount: 0 });
  type Stub = ImagePeersOptions['backend'] & EventEmitter;
  const backend = (): Stub => Object.assign(new EventEmitter(), { kind: 'qsd' as const, exportImage: async () => ref('self') }) as unknown as Stub;
  const address = { kind: 'tcp' as const, host: '10.0.1.9', port: 4420 };
  const make = (self: string, waitMs: number, settleMs: number) => new ImagePeers({ self, backend: backend(), stateDir: dir, exportAddress: address, seed: { waitMs, settleMs } });
  /** Until `peers` announces KEY (no fixed sleep: a loaded machine may take a while). */
  const announcedOn = async (peers: ImagePeers): Promise<void> => {
    while (!peers.wanting().has(KEY)) await new Promise((r) => setTimeout(r, 5));
  };
  /** A node name that ranks above / below `other` for KEY. */
  const nameRanked = (above: boolean, other: string): string =>
    Array.from({ length: 64 }, (_, i) => `n${i}`).find((n) => (rendezvous(KEY, [n, other]) === n) === above) ?? '';

  it('a follower announces at once, waits, and takes the seed as soon as its export appears', async () => {
    const seed = nameRanked(true, 'f');
    const peers = make(nameRanked(false, seed), 60_000, 10);
    const announced: number[] = [];
    peers.onAnnounce(() => announced.push(peers.wanting().get(KEY) ?? -1));
    peers.setGoldens([wanted(seed, Date.now())]);
    const used: string[] = [];
    const done = peers.ensure(spec, async (s) => {
      used.push(s.peer ? 'peer' : 'origin');
      return ok(s);
    });
    await announcedOn(peers);
    expect(announced).toHaveLength(1);
    expect(used).toEqual([]);
    peers.setGoldens([held(seed, 'hydrating', { source: ORIGIN })]);
    await done;
    expect(used).toEqual(['peer']);
    // Announced until the golden shows up, then its phase speaks.
    expect(peers.wanting().has(KEY)).toBe(true);
    await peers.sync([ok(spec)]);
    expect(peers.wanting().has(KEY)).toBe(false);
    expect(peers.published().get(KEY)).toMatchObject({ source: seed });
  });

  it('the seed reads the origin after the settle time', async () => {
    const self = nameRanked(true, 'other');
    const peers = make(self, 60_000, 30);
    peers.setGoldens([wanted('other', Date.now())]);
    const used: string[] = [];
    await peers.ensure(spec, async (s) => {
      used.push(s.peer ? 'peer' : 'origin');
      return ok(s);
    });
    expect(used).toEqual(['origin']);
    // A full import keeps its announcement's time (the others wait for it); a golden ends it.
    await peers.sync([{ ...ok(spec), phase: 'importing' }]);
    expect(peers.wanting().has(KEY)).toBe(true);
    await peers.sync([{ ...ok(spec), phase: 'ready' }]);
    expect(peers.wanting().has(KEY)).toBe(false);
  });

  it('a seed that never exports is given up on, the next too, then the origin: bounded, no deadlock', async () => {
    const self = 'follower';
    const a = nameRanked(true, self);
    const b = Array.from({ length: 64 }, (_, i) => `m${i}`).find((n) => rendezvous(KEY, [n, self]) === n && rendezvous(KEY, [n, a]) === a) ?? '';
    const peers = make(self, 40, 5);
    peers.setGoldens([wanted(a, Date.now()), wanted(b, Date.now())]);
    const used: string[] = [];
    await peers.ensure(spec, async (s) => {
      used.push(s.peer ? 'peer' : 'origin');
      return ok(s);
    });
    expect(used).toEqual(['origin']);
  });

  it('a failed import withdraws the announcement; an abort ends the wait', async () => {
    const seed = nameRanked(true, 'f');
    const peers = make(nameRanked(false, seed), 60_000, 10);
    peers.setGoldens([wanted(seed, Date.now())]);
    const ac = new AbortController();
    const waiting = peers.ensure(spec, async (s) => ok(s), ac.signal).catch((e: unknown) => e);
    await announcedOn(peers);
    ac.abort();
    expect(await waiting).toMatchObject({ name: 'AbortError' });
    expect(peers.wanting().has(KEY)).toBe(false);
  });

  it('a seed whose origin fails withdraws its announcement (the others choose another seed)', async () => {
    const self = nameRanked(true, 'other');
    const peers = make(self, 60_000, 5);
    peers.setGoldens([wanted('other', Date.now())]);
    const err = await peers.ensure(spec, async () => {
      expect(peers.wanting().has(KEY)).toBe(true);
      throw new Error('origin unreachable');
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ message: 'origin unreachable' });
    expect(peers.wanting().size).toBe(0);
  });

  it('an image from a host path (read on each node, no shared origin) is not seeded', async () => {
    const peers = make('x', 60_000, 10);
    peers.setGoldens([wanted(nameRanked(true, 'x'), Date.now())]);
    const used: string[] = [];
    await peers.ensure({ ...spec, source: { hostPath: { path: '/images/i.raw' } } }, async (s) => {
      used.push(s.peer ? 'peer' : 'origin');
      return ok(s);
    });
    expect(used).toEqual(['origin']);
    expect(peers.wanting().size).toBe(0);
  });

  it('without an export address the node neither seeds nor waits', async () => {
    const peers = new ImagePeers({ self: 'x', backend: backend(), stateDir: dir, seed: { waitMs: 60_000 } });
    peers.setGoldens([wanted(nameRanked(true, 'x'), Date.now())]);
    const used: string[] = [];
    await peers.ensure(spec, async (s) => {
      used.push(s.peer ? 'peer' : 'origin');
      return ok(s);
    });
    expect(used).toEqual(['origin']);
    expect(peers.wanting().size).toBe(0);
  });
});

describe('--seed-wait and --seed-settle', () => {
  const base = ['--backend', 'qsd', '--vhost-dir', 'vh', '--state-dir', 'st', '--node', 'n1'];
  const problems = (argv: string[]): string[] => {
    try {
      parseAgentArgs([...base, ...argv], {});
    } catch (e) {
      if (e instanceof ValidationError) return e.problems;
      throw e;
    }
    return [];
  };

  it('default to 5s and 1s; 0s turns seeding off; the settle must be shorter than the wait', () => {
    expect(parseAgentArgs(base, {})).toMatchObject({ seedWait: 5_000, seedSettle: 1_000 });
    expect(parseAgentArgs([...base, '--seed-wait', '0s'], {})).toMatchObject({ seedWait: 0 });
    expect(parseAgentArgs([...base, '--seed-wait', '30s', '--seed-settle', '250ms'], {})).toMatchObject({ seedWait: 30_000, seedSettle: 250 });
    expect(problems(['--seed-wait', '2s', '--seed-settle', '2s'])).toEqual(['--seed-settle: must be shorter than --seed-wait']);
    expect(problems(['--seed-wait', 'soon'])).toEqual([expect.stringMatching(/^--seed-wait: .*not a duration/)]);
  });
});
