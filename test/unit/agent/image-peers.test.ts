import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ImagePeers } from '../../../src/agent/image-peers.js';
import { chooseImageSource, ORIGIN, peerLoads, servedToPeers, type PeerGolden } from '../../../src/agent/image-sources.js';
import type { ImageSpec, ObservedImage, RemoteDiskRef } from '../../../src/backend/types.js';
import { BackendError } from '../../../src/backend/types.js';
import { EventEmitter } from 'node:events';
import type { ImagePeersOptions } from '../../../src/agent/image-peers.js';

const KEY = `sha256-${'a'.repeat(40)}`;
const ref = (node: string): RemoteDiskRef => ({ transport: 'nbd', address: { kind: 'tcp', host: `10.0.0.${node.charCodeAt(0)}`, port: 4420 }, exportName: `img.${KEY}`, sizeBytes: 1024 });
const golden = (node: string, phase: PeerGolden['phase'], extra: Partial<PeerGolden> = {}): PeerGolden => ({ node, key: KEY, phase, export: ref(node), ...extra });
const hostOf = (r: RemoteDiskRef | undefined): string => (r?.transport === 'nbd' && r.address.kind === 'tcp' ? r.address.host : 'origin');
const choose = (self: string, goldens: PeerGolden[], skip?: string[]) => chooseImageSource({ self, key: KEY, goldens, transport: 'nbd', ...(skip ? { skip: new Set(skip) } : {}) });

describe('chooseImageSource (pure)', () => {
  it('takes the origin when no other node holds the image', () => {
    expect(choose('b', [])).toEqual({ kind: 'origin' });
    expect(choose('b', [golden('b', 'ready')])).toEqual({ kind: 'origin' });
    expect(choose('b', [{ ...golden('a', 'ready'), key: 'other' }])).toEqual({ kind: 'origin' });
  });

  it('never takes a golden that is not exported, failed, importing, or of another transport', () => {
    const { export: _e, ...unexported } = golden('a', 'ready');
    expect(choose('b', [unexported, golden('c', 'failed'), golden('d', 'importing')])).toEqual({ kind: 'origin' });
    expect(chooseImageSource({ self: 'b', key: KEY, goldens: [golden('a', 'ready')], transport: 'nvmf-tcp' })).toEqual({ kind: 'origin' });
  });

  it('prefers a ready golden, then the least loaded one', () => {
    const goldens = [
      golden('a', 'ready'),
      golden('c', 'ready'),
      golden('x', 'hydrating', { source: 'a' }),
      golden('y', 'hydrating', { source: 'a' }),
      golden('z', 'hydrating', { source: 'c' }),
      golden('h', 'hydrating', { source: ORIGIN }),
    ];
    expect(peerLoads(goldens)).toEqual(new Map([['a', 2], ['c', 1]]));
    expect(choose('b', goldens)).toMatchObject({ kind: 'peer', node: 'c', load: 1 });
  });

  it('takes the larger of the readers others name and the readers a node publishes', () => {
    const goldens = [golden('a', 'ready', { peerReaders: 3 }), golden('c', 'ready'), golden('x', 'hydrating', { source: 'c' }), golden('y', 'hydrating', { source: 'c' })];
    expect(peerLoads(goldens)).toEqual(new Map([['a', 3], ['c', 2]]));
    expect(choose('b', goldens)).toMatchObject({ node: 'c', load: 2 });
  });

  it('counts load over every image a node serves', () => {
    const goldens = [golden('a', 'ready'), golden('c', 'ready'), { ...golden('w', 'hydrating', { source: 'c' }), key: 'other-image' }];
    expect(choose('b', goldens)).toMatchObject({ node: 'a' });
  });

  it('takes a golden hydrating straight from the origin when none is ready, never one that reads from a peer (no chains, no cycles)', () => {
    expect(choose('b', [golden('a', 'hydrating', { source: ORIGIN })])).toMatchObject({ kind: 'peer', node: 'a' });
    expect(choose('b', [golden('a', 'hydrating', { source: 'c' })])).toEqual({ kind: 'origin' });
    expect(choose('b', [golden('a', 'hydrating', { source: 'b' })])).toEqual({ kind: 'origin' });
  });

  it('falls back to the next peer, then to the origin', () => {
    const goldens = [golden('a', 'ready'), golden('c', 'ready'), golden('x', 'hydrating', { source: 'a' })];
    expect(choose('b', goldens)).toMatchObject({ node: 'c' });
    expect(choose('b', goldens, ['c'])).toMatchObject({ node: 'a' });
    expect(choose('b', goldens, ['c', 'a'])).toEqual({ kind: 'origin' });
  });

  it('spreads nodes that start at once over equally loaded peers, deterministically', () => {
    const goldens = ['p1', 'p2', 'p3', 'p4'].map((n) => golden(n, 'ready'));
    const picks = Array.from({ length: 16 }, (_, i) => choose(`node-${i}`, goldens)).map((c) => (c.kind === 'peer' ? c.node : 'origin'));
    expect(new Set(picks).size).toBeGreaterThan(1);
    expect(choose('node-3', goldens)).toEqual(choose('node-3', [...goldens].reverse()));
  });

  it('a node keeps the goldens other nodes hydrate from it, and only those', () => {
    const goldens = [golden('x', 'hydrating', { source: 'a' }), { ...golden('y', 'ready'), source: 'a' }, { ...golden('z', 'hydrating', { source: 'c' }), key: 'k2' }];
    expect(servedToPeers('a', goldens)).toEqual([KEY]);
    expect(servedToPeers('c', goldens)).toEqual(['k2']);
    expect(servedToPeers('y', goldens)).toEqual([]);
  });
});

describe('ImagePeers: source, fallback, exports', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'peers-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const spec: ImageSpec = { name: KEY, source: { http: { url: 'http://origin.invalid/i.raw', sha256: 'a'.repeat(64) } }, format: 'raw' };
  const ok = (s: ImageSpec): ObservedImage => ({ name: s.name, phase: 'hydrating', sizeBytes: 1024, ref: 'x', cloneCount: 0 });
  type Stub = ImagePeersOptions['backend'] & EventEmitter;
  const qsd = (): Stub => Object.assign(new EventEmitter(), { kind: 'qsd' as const }) as Stub;

  it('tries the least loaded peer, the next one when it fails, then the origin', async () => {
    const peers = new ImagePeers({ self: 'b', backend: qsd(), stateDir: dir });
    peers.setGoldens([golden('a', 'ready'), golden('c', 'ready'), golden('x', 'hydrating', { source: 'a' })]);
    const tried: string[] = [];
    const img = await peers.ensure(spec, async (s) => {
      tried.push(hostOf(s.peer));
      throw new BackendError('peer unreachable', 'transport');
    }).catch((e: unknown) => e);
    expect(img).toBeInstanceOf(BackendError);
    expect(tried).toEqual([hostOf(ref('c')), hostOf(ref('a')), 'origin']);
  });

  it('takes a qcow2 image from its origin (its sha256 is the file\'s, not what a peer serves)', async () => {
    const peers = new ImagePeers({ self: 'b', backend: qsd(), stateDir: dir });
    peers.setGoldens([golden('a', 'ready')]);
    const seen: Array<RemoteDiskRef | undefined> = [];
    await peers.ensure({ ...spec, format: 'qcow2' }, async (s) => {
      seen.push(s.peer);
      return ok(s);
    });
    expect(seen).toEqual([undefined]);
  });

  it('names its source until hydrated (also across a restart), then stands alone; exports its goldens to the other nodes', async () => {
    const backend = qsd();
    const exports: Array<{ name: string; allowed: string[] }> = [];
    backend.exportImage = async (name: string, opts: { allowedNodes: string[] }) => {
      exports.push({ name, allowed: opts.allowedNodes });
      return ref('b');
    };
    const address = { kind: 'tcp' as const, host: '10.0.0.2', port: 4420 };
    const peers = new ImagePeers({ self: 'b', backend, stateDir: dir, exportAddress: address });
    peers.setGoldens([golden('a', 'ready'), golden('c', 'ready'), golden('x', 'hydrating', { source: 'c' })]);
    await peers.ensure(spec, async (s) => ok(s));
    await peers.sync([ok(spec)]);
    expect(peers.published().get(KEY)).toMatchObject({ source: 'a', export: ref('b') });
    expect(exports).toEqual([{ name: KEY, allowed: ['a', 'c', 'x'] }]);

    // A restarted agent names the same source (the peer must keep its golden meanwhile).
    const again = new ImagePeers({ self: 'b', backend, stateDir: dir, exportAddress: address });
    again.setGoldens([golden('c', 'ready')]);
    await again.sync([{ ...ok(spec), hydratedPercent: 40 }]);
    expect(again.published().get(KEY)).toMatchObject({ source: 'a', hydratedPercent: 40 });
    const used: string[] = [];
    await again.ensure(spec, async (s) => {
      used.push(hostOf(s.peer));
      return ok(s);
    });
    expect(used).toEqual([hostOf(ref('a'))]);

    // Hydrated: no source any more, and readers are counted.
    again.setGoldens([golden('c', 'ready'), golden('y', 'hydrating', { source: 'b' })]);
    await again.sync([{ ...ok(spec), phase: 'ready' }]);
    expect(again.published().get(KEY)).toEqual({ export: ref('b'), peerReaders: 1 });
    expect(again.servedToPeers()).toEqual([KEY]);
  });
});
