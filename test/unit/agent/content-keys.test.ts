import { describe, expect, it } from 'vitest';
import { buildDesired } from '../../../src/agent/desired.js';
import { emptyJournalState } from '../../../src/agent/journal.js';
import { reconcile, type Action, type AgentMemory, type ReconcileConfig } from '../../../src/agent/reconcile.js';
import type { ImageSpec, ObservedImage, ObservedState } from '../../../src/backend/types.js';
import { imageKey, isContentKey } from '../../../src/contract/index.js';
import { standaloneVmi } from '../../../src/agent/standalone.js';
import { GiB, image, vmi } from './fixtures.js';

/** Goldens are keyed by content: the same sha256 under two CachedImage names is one golden. */

const SHA_A = 'a'.repeat(64);
const SHA_B = 'b'.repeat(64);
const http = (name: string, sha256: string, format: 'raw' | 'qcow2' = 'raw'): ImageSpec => ({ name, source: { http: { url: `http://origin.invalid/${name}.img`, sha256 } }, format, sizeBytes: GiB });
const config: ReconcileConfig = { socket: { uid: 107, gid: 107, mode: 0o660 }, orphanGraceMs: 60_000, cache: {} };
const memory = (): AgentMemory => ({ journal: emptyJournalState(), now: 1, failed: new Map(), sockets: new Map() });
const img = (name: string, extra: Partial<ObservedImage> = {}): ObservedImage => ({ name, phase: 'ready', sizeBytes: GiB, ref: `images/${name}`, cloneCount: 0, ...extra });
const obs = (o: Partial<ObservedState> = {}): ObservedState => ({ images: [], disks: [], controllers: [], ...o });
const of = <K extends Action['kind']>(plan: Action[], kind: K): Array<Extract<Action, { kind: K }>> => plan.filter((a): a is Extract<Action, { kind: K }> => a.kind === kind);
const view = (vmis: ReturnType<typeof vmi>[], images: ImageSpec[], servedToPeers?: string[]) =>
  buildDesired({ vmis: vmis.map((v) => standaloneVmi(`${v.metadata.name}.yaml`, v)), images, ...(servedToPeers ? { servedToPeers } : {}) });

describe('content keys (contract imageKey)', () => {
  it('derives the key from the sha256 and the format; a source without sha256 keeps its name', () => {
    expect(imageKey(http('fedora', SHA_A))).toBe(`sha256-${'a'.repeat(40)}`);
    expect(imageKey(http('other-name', SHA_A))).toBe(imageKey(http('fedora', SHA_A)));
    expect(imageKey(http('fedora', SHA_B))).not.toBe(imageKey(http('fedora', SHA_A)));
    expect(imageKey(http('fedora', SHA_A, 'qcow2'))).toBe(`sha256-${'a'.repeat(40)}-q`);
    expect(imageKey(image('dev'))).toBe('dev');
    expect(imageKey({ name: 'dev', source: { hostPath: { path: '/x', sha256: SHA_A } }, format: 'raw' })).toBe(imageKey(http('x', SHA_A)));
    // Fits every driver's naming rule: a DNS label, and spdk's img-<key>-importing in 63 characters.
    for (const k of [imageKey(http('a', SHA_A)), imageKey(http('a', SHA_A, 'qcow2'))]) {
      expect(k).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
      expect(`img-${k}-importing`.length).toBeLessThanOrEqual(63);
      expect(isContentKey(k)).toBe(true);
    }
    expect(isContentKey('dev')).toBe(false);
  });
});

describe('buildDesired: the catalog by content', () => {
  it('stores the same content under two CachedImage names once, and status can name both', () => {
    const d = view([vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }]), vmi('b', 'slot-02', [{ name: 'root', image: 'fedora-copy' }])], [http('fedora', SHA_A), http('fedora-copy', SHA_A)]);
    const key = imageKey(http('fedora', SHA_A));
    expect(d.images.map((i) => i.name)).toEqual([key]);
    expect(d.imageNames).toEqual({ [key]: ['fedora', 'fedora-copy'] });
    const disks = d.vmis.flatMap((v) => v.disks);
    expect(disks.map((x) => x.source)).toEqual([{ kind: 'image', image: key }, { kind: 'image', image: key }]);
    expect(disks.map((x) => x.imageName)).toEqual(['fedora', 'fedora-copy']);
    // One import for both disks.
    const plan = reconcile(d, obs(), memory(), config);
    expect(new Set(of(plan, 'ensureImage').map((a) => a.image.name))).toEqual(new Set([key]));
  });

  it('imports shared content from a file on the node rather than from a URL with the same bytes', () => {
    const local: ImageSpec = { name: 'zz-local', source: { hostPath: { path: '/var/lib/images/f.raw', sha256: SHA_A } }, format: 'raw', sizeBytes: GiB };
    const d = view([vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }])], [http('fedora', SHA_A), local]);
    expect(d.images).toEqual([{ ...local, name: imageKey(local) }]);
    expect(d.imageNames).toEqual({ [imageKey(local)]: ['fedora', 'zz-local'] });
  });

  it('keeps hostPath images without sha256 under their own name (img-<name> goldens)', () => {
    const d = view([vmi('a', 'slot-01', [{ name: 'root', image: 'dev' }])], [image('dev')]);
    expect(d.images.map((i) => i.name)).toEqual(['dev']);
    expect(d.vmis[0]?.disks[0]?.source).toEqual({ kind: 'image', image: 'dev' });
  });

  it('messages name the CachedImage, not the key', () => {
    const d = view([vmi('a', 'slot-01', [{ name: 'root', image: 'fedora', capacity: '512Mi' }])], [http('fedora', SHA_A)]);
    expect(d.vmis[0]?.disks[0]?.problem).toMatch(/image fedora \(1Gi\)/);
  });
});

describe('versions: a changed source is a new golden beside the old one', () => {
  const oldKey = imageKey(http('fedora', SHA_A));
  const newKey = imageKey(http('fedora', SHA_B));

  it('a new disk clones the new version; the old one stays while a disk uses it', () => {
    const d = view([vmi('b', 'slot-02', [{ name: 'root', image: 'fedora' }])], [http('fedora', SHA_B)]);
    const plan = reconcile(d, obs({ images: [img(oldKey, { cloneCount: 1 })] }), memory(), config);
    expect(of(plan, 'ensureImage').map((a) => a.image.name)).toEqual([newKey]);
    expect(of(plan, 'evictImage')).toEqual([]);
  });

  it('the old version goes once no disk uses it', () => {
    const d = view([vmi('b', 'slot-02', [{ name: 'root', image: 'fedora' }])], [http('fedora', SHA_B)]);
    const plan = reconcile(d, obs({ images: [img(oldKey), img(newKey)] }), memory(), config);
    expect(of(plan, 'evictImage').map((a) => a.name)).toEqual([oldKey]);
  });

  it('an old version another node still hydrates from is kept', () => {
    const d = view([], [http('fedora', SHA_B)], [oldKey]);
    const plan = reconcile(d, obs({ images: [img(oldKey)] }), memory(), config);
    expect(of(plan, 'evictImage')).toEqual([]);
  });
});
