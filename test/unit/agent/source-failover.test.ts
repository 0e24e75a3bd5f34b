import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { emptyDesired } from '../../../src/agent/desired.js';
import { Executor, FreshObserver } from '../../../src/agent/executor.js';
import { ImageCache } from '../../../src/agent/image-cache.js';
import { Journal } from '../../../src/agent/journal.js';
import { indexDesired } from '../../../src/agent/safety.js';
import { BackendError } from '../../../src/backend/types.js';
import { FakeBackend } from '../../helpers/fake-backend.js';
import { ORIGIN, type PeerGolden } from '../../../src/agent/image-sources.js';
import { chooseFailovers, nextFailoverDue, SourceFailover, type FailoverInput, type RecordedSource, type RetargetImageAction } from '../../../src/agent/source-failover.js';
import type { ImageSpec, ObservedImage, RemoteDiskRef } from '../../../src/backend/types.js';

const KEY = `sha256-${'b'.repeat(40)}`;
const NOW = 1_000_000;
const ref = (node: string): RemoteDiskRef => ({ transport: 'nbd', address: { kind: 'tcp', host: `10.0.0.${node.charCodeAt(0)}`, port: 4420 }, exportName: `img.${KEY}`, sizeBytes: 1024 });
const golden = (node: string, phase: PeerGolden['phase'], extra: Partial<PeerGolden> = {}): PeerGolden => ({ node, key: KEY, phase, export: ref(node), ...extra });
const spec: ImageSpec = { name: KEY, source: { http: { url: 'https://origin.example/img.raw', sha256: 'b'.repeat(64) } }, format: 'raw', sizeBytes: 1024 };
const paused = (sinceMsAgo: number, extra: Partial<ObservedImage> = {}): ObservedImage => ({
  name: KEY,
  phase: 'hydrating',
  sizeBytes: 1024,
  ref: '/x',
  cloneCount: 1,
  hydratedPercent: 40,
  sourceUnreachableSinceMs: NOW - sinceMsAgo,
  ...extra,
});

const input = (o: Partial<FailoverInput> = {}): FailoverInput => ({
  self: 'b',
  now: NOW,
  afterMs: 10_000,
  images: [paused(12_000)],
  specs: [spec],
  sources: { [KEY]: { node: 'a', ref: ref('a') } },
  goldens: [golden('a', 'ready'), golden('c', 'ready')],
  transport: 'nbd',
  canRetarget: true,
  canRetargetToOrigin: true,
  ...o,
});

describe('chooseFailovers (pure)', () => {
  it('moves a hydration whose peer has been unreachable long enough to the next peer, never back to the dead one', () => {
    expect(chooseFailovers(input())).toEqual([{ kind: 'retargetImage', image: { ...spec, peer: ref('c') }, from: 'a', to: 'c', unreachableMs: 12_000 }]);
  });

  it('waits while the source has been unreachable for less than the bound, and does nothing for a hydration that runs or an image that is ready', () => {
    expect(chooseFailovers(input({ images: [paused(9_999)] }))).toEqual([]);
    const { sourceUnreachableSinceMs: _s, ...running } = paused(0);
    expect(chooseFailovers(input({ images: [running] }))).toEqual([]);
    expect(chooseFailovers(input({ images: [{ ...paused(60_000), phase: 'ready' }] }))).toEqual([]);
    // Exactly at the bound it switches.
    expect(chooseFailovers(input({ images: [paused(10_000)] }))).toHaveLength(1);
  });

  it('falls back to the origin when no other peer holds the image, and keeps the spec without a peer', () => {
    const out = chooseFailovers(input({ goldens: [golden('a', 'ready')] }));
    expect(out).toEqual([{ kind: 'retargetImage', image: spec, from: 'a', to: ORIGIN, unreachableMs: 12_000 }]);
    expect((out[0] as RetargetImageAction).image.peer).toBeUndefined();
  });

  it('does not pick a peer that itself reads from a peer, nor one of another key or transport', () => {
    const goldens = [golden('a', 'ready'), golden('d', 'hydrating', { source: 'a' }), { ...golden('e', 'ready'), key: 'other' }];
    expect(chooseFailovers(input({ goldens }))).toMatchObject([{ to: ORIGIN }]);
    expect(chooseFailovers(input({ transport: 'nvmf-tcp' }))).toMatchObject([{ to: ORIGIN }]);
    // A peer hydrating straight from the origin is a candidate.
    expect(chooseFailovers(input({ goldens: [golden('a', 'ready'), golden('h', 'hydrating', { source: ORIGIN })] }))).toMatchObject([{ to: 'h' }]);
  });

  it('skips sources that failed as a new source just now, then the origin, then reports that it waits', () => {
    expect(chooseFailovers(input({ failed: new Map([[KEY, new Set(['c'])]]) }))).toMatchObject([{ to: ORIGIN }]);
    const out = chooseFailovers(input({ failed: new Map([[KEY, new Set(['c', ORIGIN])]]) }));
    expect(out).toEqual([{ kind: 'reportBlocked', object: 'image', name: KEY, reason: expect.stringMatching(/source a unreachable for 12s; no other node holds it/) }]);
  });

  it('a hydration from the origin moves to a peer that holds the image, and waits when none does', () => {
    expect(chooseFailovers(input({ sources: {}, goldens: [golden('a', 'ready')] }))).toMatchObject([{ kind: 'retargetImage', from: ORIGIN, to: 'a' }]);
    expect(chooseFailovers(input({ sources: { [KEY]: { node: ORIGIN } }, goldens: [] }))).toMatchObject([{ kind: 'reportBlocked', reason: expect.stringMatching(/source origin unreachable/) }]);
  });

  it('never switches to an origin that cannot be read lazily (a host path), nor a qcow2 image, nor one gone from the catalog', () => {
    const hostPath: ImageSpec = { ...spec, source: { hostPath: { path: '/images/x.raw' } } };
    expect(chooseFailovers(input({ specs: [hostPath], goldens: [golden('a', 'ready')] }))).toMatchObject([{ kind: 'reportBlocked' }]);
    expect(chooseFailovers(input({ specs: [{ ...spec, format: 'qcow2' }] }))).toMatchObject([{ kind: 'reportBlocked', reason: expect.stringMatching(/only raw/) }]);
    expect(chooseFailovers(input({ specs: [] }))).toMatchObject([{ kind: 'reportBlocked', reason: expect.stringMatching(/no longer in the catalog/) }]);
  });

  it('a backend that switches between peers only (spdk) never goes to the origin: it waits', () => {
    expect(chooseFailovers(input({ canRetargetToOrigin: false }))).toMatchObject([{ kind: 'retargetImage', to: 'c' }]);
    expect(chooseFailovers(input({ canRetargetToOrigin: false, goldens: [golden('a', 'ready')] }))).toEqual([
      { kind: 'reportBlocked', object: 'image', name: KEY, reason: expect.stringMatching(/cannot read the origin instead: waiting/) },
    ]);
  });

  it('a backend that cannot switch at all reports that it keeps waiting, and plans no switch', () => {
    expect(chooseFailovers(input({ canRetarget: false }))).toEqual([
      { kind: 'reportBlocked', object: 'image', name: KEY, reason: expect.stringMatching(/cannot switch a hydrating image to another source: waiting/) },
    ]);
  });

  it('handles each paused image on its own', () => {
    const k2 = `sha256-${'c'.repeat(40)}`;
    const images = [paused(12_000), { ...paused(3_000), name: k2 }];
    expect(chooseFailovers(input({ images, specs: [spec, { ...spec, name: k2 }] }))).toMatchObject([{ image: { name: KEY } }]);
  });
});

describe('nextFailoverDue (pure)', () => {
  it('is the earliest time a paused hydration reaches the bound; none when nothing is paused or all are due already', () => {
    expect(nextFailoverDue([paused(3_000), { ...paused(8_000), name: 'x' }], 10_000, NOW)).toBe(NOW + 2_000);
    expect(nextFailoverDue([paused(12_000)], 10_000, NOW)).toBeUndefined();
    expect(nextFailoverDue([], 10_000, NOW)).toBeUndefined();
  });
});

describe('SourceFailover', () => {
  function rig(): { f: SourceFailover; recorded: Record<string, RecordedSource> } {
    const recorded: Record<string, RecordedSource> = { [KEY]: { node: 'a', ref: ref('a') } };
    const f = new SourceFailover({
      self: 'b',
      afterMs: 10_000,
      transport: 'nbd',
      canRetarget: true,
      canRetargetToOrigin: true,
      view: () => Promise.resolve({ goldens: [golden('a', 'ready'), golden('c', 'ready')], sources: recorded }),
      record: (name, s) => {
        recorded[name] = s;
        return Promise.resolve();
      },
    });
    return { f, recorded };
  }

  it('records the new source before the switch, and the old one again when the switch failed; the failed one is skipped for the bound, then tried again', async () => {
    const { f, recorded } = rig();
    const [a] = (await f.plan([paused(12_000)], [spec], NOW)) as RetargetImageAction[];
    expect(a).toMatchObject({ to: 'c' });
    if (!a) return;
    await f.willSwitch(a);
    expect(recorded[KEY]).toEqual({ node: 'c', ref: ref('c') });
    await f.switchFailed(a, { node: 'a', ref: ref('a') }, NOW);
    expect(recorded[KEY]).toEqual({ node: 'a', ref: ref('a') });
    expect(await f.plan([paused(12_000)], [spec], NOW + 1)).toMatchObject([{ to: ORIGIN }]);
    expect(await f.plan([paused(22_000)], [spec], NOW + 10_000)).toMatchObject([{ to: 'c' }]);
  });

  it('a switch to the origin records the origin', async () => {
    const { f, recorded } = rig();
    await f.willSwitch({ kind: 'retargetImage', image: spec, from: 'a', to: ORIGIN, unreachableMs: 1 });
    expect(recorded[KEY]).toEqual({ node: ORIGIN });
  });
});

describe('the executor runs a switch (retargetImage)', () => {
  async function rig(retarget: (s: ImageSpec) => Promise<ObservedImage>): Promise<{ exec: Executor; recorded: Record<string, RecordedSource>; calls: ImageSpec[]; journal: Journal; f: SourceFailover; dir: string }> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'fo-'));
    const calls: ImageSpec[] = [];
    const backend = Object.assign(new FakeBackend(path.join(dir, 'vh')), {
      retargetImage: (s: ImageSpec) => {
        calls.push(s);
        return retarget(s);
      },
    });
    const journal = await Journal.open(path.join(dir, 'state'));
    const recorded: Record<string, RecordedSource> = { [KEY]: { node: 'a', ref: ref('a') } };
    const f = new SourceFailover({
      self: 'b',
      afterMs: 10_000,
      transport: 'nbd',
      canRetarget: true,
      canRetargetToOrigin: true,
      view: () => Promise.resolve({ goldens: [golden('a', 'ready'), golden('c', 'ready')], sources: recorded }),
      record: (name, s) => {
        recorded[name] = s;
        return Promise.resolve();
      },
    });
    const exec = new Executor({
      backend,
      journal,
      images: new ImageCache(backend, journal),
      observer: new FreshObserver(backend),
      desiredNow: () => indexDesired(emptyDesired()),
      retry: { attempts: 2, baseMs: 1, maxMs: 2 },
      concurrency: 4,
      failover: f,
      now: () => NOW,
    });
    return { exec, recorded, calls, journal, f, dir };
  }
  const action: RetargetImageAction = { kind: 'retargetImage', image: { ...spec, peer: ref('c') }, from: 'a', to: 'c', unreachableMs: 12_000 };

  it('records the new source and asks the backend to switch to it; nothing stays pending', async () => {
    const r = await rig((s) => Promise.resolve({ ...paused(0), message: `now ${s.peer?.transport}` }));
    const res = await r.exec.execute([action]);
    expect(res.calls).toBe(1);
    expect(r.calls).toEqual([action.image]);
    expect(r.recorded[KEY]).toEqual({ node: 'c', ref: ref('c') });
    expect(r.journal.state.pending).toEqual({});
    await rm(r.dir, { recursive: true, force: true });
  });

  it('a switch the backend refuses puts the old source back on record, and the next plan skips that target', async () => {
    const r = await rig(() => Promise.reject(new BackendError('peer c does not answer', 'transport')));
    await r.exec.execute([action]);
    expect(r.calls).toHaveLength(1);
    expect(r.recorded[KEY]).toEqual({ node: 'a', ref: ref('a') });
    expect(r.journal.state.pending).toEqual({});
    expect(await r.f.plan([paused(12_000)], [spec], NOW)).toMatchObject([{ to: ORIGIN }]);
    await rm(r.dir, { recursive: true, force: true });
  });
});
