import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/log.js';
import { InformerImageCatalog } from '../../../webhooks/catalog.js';
import { FakeApiServer, resourceKey } from '../../helpers/fake-apiserver.js';
import { until } from '../../helpers/process.js';
import { FakeCachedImageSource } from '../../helpers/webhook.js';

const CIMGS = resourceKey('kubevirt-spdk.io/v1alpha1', 'cachedimages');

const image = (name: string, spec: Record<string, unknown> = { source: { hostPath: { path: `/images/${name}.raw` } }, size: '1Gi' }) => ({
  apiVersion: 'kubevirt-spdk.io/v1alpha1',
  kind: 'CachedImage',
  metadata: { name },
  spec,
});

describe('InformerImageCatalog over a source', () => {
  it('keeps valid CachedImages, leaves out invalid ones and drops deleted ones', () => {
    const source = new FakeCachedImageSource();
    const catalog = new InformerImageCatalog(source, silentLogger);
    source.put(image('f'));
    expect(catalog.get('f')).toEqual({ sizeBytes: 2 ** 30 });
    source.put(image('f', { bogus: 1 }));
    expect(catalog.get('f')).toBeUndefined();
    source.put(image('f'));
    source.put(image('unsized', { source: { hostPath: { path: '/x' } } }));
    expect(catalog.get('unsized')).toEqual({});
    source.remove('f');
    expect(catalog.get('f')).toBeUndefined();
  });

  it('is not synced until its source has listed', () => {
    const source = new FakeCachedImageSource();
    const catalog = new InformerImageCatalog(source, silentLogger);
    source.put(image('f'));
    expect(catalog.synced()).toBe(false);
    source.sync();
    expect(catalog.synced()).toBe(true);
  });
});

describe('InformerImageCatalog on the cluster informer', () => {
  let api: FakeApiServer | undefined;
  let catalog: InformerImageCatalog | undefined;
  afterEach(async () => {
    await catalog?.stop();
    await api?.close();
    catalog = api = undefined;
  });

  it('reports ready only once the first list is in: never an empty catalog', async () => {
    api = await FakeApiServer.start();
    const names = Array.from({ length: 30 }, (_, i) => `img-${i}`);
    for (const n of names) api.put(CIMGS, image(n));
    // The API server is away at start: the informer fails and retries, and must not look ready.
    await api.goAway();
    catalog = await InformerImageCatalog.forCluster(silentLogger, { kubeConfig: api.kubeConfig('webhook'), backoff: { initialMs: 20, maxMs: 100 } });
    const c = catalog;
    await c.start();
    expect(c.synced()).toBe(false);
    await api.comeBack();
    await until('the catalog to sync', () => Promise.resolve(c.synced() || undefined), 10_000);
    // The moment it is ready it knows every image (the old `connect`-based flag was set before the list).
    expect(names.filter((n) => c.get(n) === undefined)).toEqual([]);
  });

  it('follows CachedImages created and deleted after the first list', async () => {
    api = await FakeApiServer.start();
    catalog = await InformerImageCatalog.forCluster(silentLogger, { kubeConfig: api.kubeConfig('webhook') });
    const c = catalog;
    await c.start();
    await until('the catalog to sync', () => Promise.resolve(c.synced() || undefined), 10_000);
    expect(c.get('late')).toBeUndefined();
    api.put(CIMGS, image('late'));
    await until('the new image', () => Promise.resolve(c.get('late')), 10_000);
    api.remove(CIMGS, 'late');
    await until('the deletion', () => Promise.resolve(c.get('late') === undefined || undefined), 10_000);
  });
});
