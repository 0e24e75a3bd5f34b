import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import pino from 'pino';
import { BootProfiles, bootProfilesOf } from '../../../src/agent/boot-profile.js';
import type { ImageSpec } from '../../../src/backend/types.js';
import { nodeImageCacheStatus, peerGoldensOf } from '../../../src/kube/mapping.js';

const KEY = `sha256-${'a'.repeat(40)}`;
const MiB = 1024 * 1024;
const good = { sizeBytes: 64 * MiB, ranges: [{ offset: 0, length: 65536 }, { offset: 8 * MiB, length: 131072 }] };
const cache = (node: string, images: unknown[]): unknown => ({ metadata: { name: node }, status: { images } });
const spec: ImageSpec = { name: KEY, source: { http: { url: 'http://origin/img', sha256: 'a'.repeat(64) } }, format: 'raw' };

describe('boot profiles from other nodes (pure reader)', () => {
  it('takes a valid profile per content key, the first node in name order', () => {
    const other = { ...good, ranges: [{ offset: 0, length: 65536 }] };
    const { profiles, problems } = bootProfilesOf([
      cache('node-b', [{ name: 'fedora', key: KEY, phase: 'ready', bootProfile: other }]),
      cache('node-a', [{ name: 'fedora', key: KEY, phase: 'hydrating', bootProfile: good }]),
      cache('node-c', [{ name: 'plain', phase: 'ready' }]),
    ]);
    expect(problems).toEqual([]);
    expect(profiles).toEqual(new Map([[KEY, good]]));
  });

  it('refuses a hostile profile naming the node, the entry and the field; the golden stays a peer source', () => {
    const bad = [
      cache('node-a', [
        { name: 'x', phase: 'ready' },
        { name: 'fedora', key: KEY, phase: 'ready', bootProfile: { ...good, ranges: [{ offset: 0, length: 128 * MiB }] }, export: { transport: 'nbd', address: { kind: 'tcp', host: '10.0.0.1', port: 4420 }, exportName: 'e', sizeBytes: 64 * MiB } },
      ]),
      cache('node-b', [{ name: 'fedora', key: KEY, phase: 'ready', bootProfile: { ...good, ranges: Array.from({ length: 5000 }, (_, i) => ({ offset: i * 131072, length: 65536 })) } }]),
      cache('node-c', [{ name: 'fedora', key: KEY, phase: 'ready', bootProfile: { ...good, file: '/etc/shadow' } }]),
    ];
    const { profiles, problems } = bootProfilesOf(bad);
    expect(profiles.size).toBe(0);
    expect(problems[0]).toBe('NodeImageCache node-a: images[1].bootProfile.ranges[0].length: range 0+134217728 ends beyond the image size 67108864');
    expect(problems[1]).toMatch(/^NodeImageCache node-b: images\[0\]\.bootProfile\.ranges: Array must contain at most 1024 element/);
    expect(problems[2]).toMatch(/^NodeImageCache node-c: images\[0\]\.bootProfile: Unrecognized key\(s\) in object: 'file'/);
    // The bad profile does not hide node-a's golden from peer choice.
    expect(peerGoldensOf(bad).filter((g) => g.node === 'node-a' && g.key === KEY)).toHaveLength(1);
  });

  it('puts the profile into the typed ImageSpec, logs each refusal once', () => {
    const lines: string[] = [];
    const log = pino({ level: 'warn' }, new Writable({ write: (c: Buffer, _e, cb) => (lines.push(c.toString()), cb()) }));
    const p = new BootProfiles(log);
    expect(p.withProfile(spec)).toBe(spec);
    const caches = [cache('node-a', [{ name: 'fedora', key: KEY, phase: 'ready', bootProfile: good }]), cache('node-z', [{ name: 'fedora', key: KEY, phase: 'ready', bootProfile: 'nope' }])];
    p.setCaches(caches);
    p.setCaches(caches);
    expect(p.withProfile(spec)).toEqual({ ...spec, bootProfile: good });
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('NodeImageCache node-z: images[0].bootProfile: Expected object');
  });

  it('a node publishes the profile it holds in its NodeImageCache', () => {
    const s = nodeImageCacheStatus(
      { backend: { kind: 'qsd', ok: true }, images: [{ name: KEY, phase: 'ready', sizeBytes: 64 * MiB, cloneCount: 0, bootProfile: good }] },
      '2026-01-01T00:00:00Z',
      { names: { [KEY]: ['fedora', 'fedora-copy'] } },
    );
    expect(s.images[0]).toMatchObject({ name: 'fedora', key: KEY, bootProfile: good });
    // Once per golden: the other names of the same content do not repeat it.
    expect(s.images[1]).toMatchObject({ name: 'fedora-copy', key: KEY });
    expect(s.images[1]?.bootProfile).toBeUndefined();
    expect(bootProfilesOf([{ metadata: { name: 'node-a' }, status: s }]).profiles.get(KEY)).toEqual(good);
  });
});
