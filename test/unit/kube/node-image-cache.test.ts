import { describe, expect, it } from 'vitest';
import type { NodeStatus } from '../../../src/agent/node-status.js';
import type { RemoteDiskRef } from '../../../src/backend/types.js';
import { nodeCacheIndex } from '../../../src/controller/image-status.js';
import { nodeImageCacheStatus, peerGoldensOf } from '../../../src/kube/mapping.js';

const KEY = `sha256-${'a'.repeat(40)}`;
const ref: RemoteDiskRef = { transport: 'nbd', address: { kind: 'tcp', host: '10.0.0.1', port: 4420 }, exportName: `img.${KEY}`, sizeBytes: 1024 };
const node = (images: NodeStatus['images']): Pick<NodeStatus, 'backend' | 'images'> => ({ backend: { kind: 'qsd', ok: true }, images });

describe('NodeImageCache status: CachedImage names over content keys, peer distribution', () => {
  it('lists each CachedImage name of a golden with its key, state, source and export; counts the golden once', () => {
    const s = nodeImageCacheStatus(
      node([
        { name: KEY, phase: 'hydrating', sizeBytes: 1024, cloneCount: 1 },
        { name: 'sha256-old', phase: 'ready', sizeBytes: 100, cloneCount: 1 },
      ]),
      '2026-01-01T00:00:00Z',
      { names: { [KEY]: ['fedora', 'fedora-copy'] }, info: new Map([[KEY, { source: 'node-a', hydratedPercent: 37.4, export: ref, peerReaders: 2 }]]) },
    );
    expect(s.images.map((i) => [i.name, i.key])).toEqual([
      ['fedora', KEY],
      ['fedora-copy', KEY],
      ['sha256-old', 'sha256-old'],
    ]);
    expect(s.images[0]).toMatchObject({ phase: 'hydrating', hydratedPercent: 37, source: 'node-a', export: ref, peerReaders: 2 });
    expect(s.summary).toBe('fedora[hydrating 37% from node-a](1 clone), fedora-copy[hydrating 37% from node-a](1 clone), sha256-old(1 clone)');
    expect(s.usedBytes).toBe(1124);
    // The controller's readyNodes counts the ready CachedImage names of what the agent published.
    expect(nodeCacheIndex([{ metadata: { name: 'n' }, status: s }]).holders).toEqual(new Map([['sha256-old', ['n']]]));
  });

  it('reads every node\'s goldens; a bad entry is skipped, not the node', () => {
    const caches = [
      { metadata: { name: 'node-a' }, status: { images: [{ name: 'fedora', key: KEY, phase: 'ready', export: ref, peerReaders: 1 }, { name: 'fedora-copy', key: KEY, phase: 'ready', export: ref }, { name: 'x', phase: 'weird' }] } },
      { metadata: { name: 'node-b' }, status: { images: [{ name: 'fedora', key: KEY, phase: 'hydrating', source: 'node-a', export: { transport: 'nbd', address: { kind: 'tcp', host: 'h' } } }] } },
      { metadata: { name: 'node-c' }, status: { images: [{ name: 'dev', phase: 'ready' }] } },
      { metadata: {}, status: { images: [] } },
      null,
    ];
    expect(peerGoldensOf(caches)).toEqual([
      { node: 'node-a', key: KEY, phase: 'ready', export: ref, peerReaders: 1 },
      { node: 'node-c', key: 'dev', phase: 'ready' },
    ]);
  });

  it('drops an export on a unix socket (a path on the reader\'s host) unless the setup is single-host', () => {
    const unix: RemoteDiskRef = { transport: 'nbd', address: { kind: 'unix', path: '/run/some.sock' }, exportName: 'x', sizeBytes: 1 };
    const caches = [{ metadata: { name: 'node-a' }, status: { images: [{ name: 'fedora', key: KEY, phase: 'ready', export: unix }] } }];
    expect(peerGoldensOf(caches)).toEqual([{ node: 'node-a', key: KEY, phase: 'ready' }]);
    expect(peerGoldensOf(caches, { allowUnix: true })).toEqual([{ node: 'node-a', key: KEY, phase: 'ready', export: unix }]);
  });
});
