import { readFile } from 'node:fs/promises';
import { parseCachedImages, API_GROUP, API_VERSION, CachedImageSchema, type CachedImage } from '../src/api/cachedimage.js';
import { formatZodError } from '../src/api/errors.js';
import type { Logger } from '../src/log.js';
import type { KubernetesListObject, KubernetesObject } from '@kubernetes/client-node';

/** What the webhook needs to know about a CachedImage. */
export interface CatalogEntry {
  /** Virtual size when the CachedImage states it; unknown sizes are checked on the node. */
  sizeBytes?: number;
}

/** Read-only view of the cluster's CachedImages. */
export interface ImageCatalog {
  get(name: string): CatalogEntry | undefined;
  /** False until the first full list arrived: answers before that would be wrong. */
  synced(): boolean;
}

function entryOf(img: CachedImage): CatalogEntry {
  return img.spec.size === undefined ? {} : { sizeBytes: img.spec.size };
}

/** A fixed set of images: standalone mode and tests. */
export class StaticImageCatalog implements ImageCatalog {
  private readonly entries: ReadonlyMap<string, CatalogEntry>;
  constructor(images: readonly CachedImage[]) {
    this.entries = new Map(images.map((i) => [i.metadata.name, entryOf(i)]));
  }
  static async fromFile(file: string): Promise<StaticImageCatalog> {
    return new StaticImageCatalog(parseCachedImages(await readFile(file, 'utf8'), file));
  }
  get(name: string): CatalogEntry | undefined {
    return this.entries.get(name);
  }
  synced(): boolean {
    return true;
  }
}

/**
 * The catalog kept by an informer on the cluster-scoped CachedImage CRD. A CachedImage that
 * fails the schema is left out (and logged): admitting a VMI against it would fail on the
 * node anyway, and the webhook then says the image does not exist.
 */
export class InformerImageCatalog implements ImageCatalog {
  private readonly entries = new Map<string, CatalogEntry>();
  private hasSynced = false;
  private stopFn: (() => Promise<void>) | undefined;

  constructor(private readonly logger: Logger) {}

  get(name: string): CatalogEntry | undefined {
    return this.entries.get(name);
  }
  synced(): boolean {
    return this.hasSynced;
  }

  /** Applies one watch event; exported for tests of the informer-free logic. */
  apply(type: 'add' | 'update' | 'delete', obj: unknown): void {
    const name = (obj as { metadata?: { name?: unknown } } | null)?.metadata?.name;
    if (typeof name !== 'string') return;
    if (type === 'delete') {
      this.entries.delete(name);
      return;
    }
    const res = CachedImageSchema.safeParse(obj);
    if (!res.success) {
      this.entries.delete(name);
      this.logger.warn({ image: name, problems: formatZodError(`cachedimage ${name}`, res.error) }, 'ignoring invalid CachedImage');
      return;
    }
    this.entries.set(name, entryOf(res.data));
  }

  async start(): Promise<void> {
    // Loaded lazily: standalone mode and tests never need the Kubernetes client.
    const k8s = await import('@kubernetes/client-node');
    const kc = new k8s.KubeConfig();
    kc.loadFromDefault();
    const api = kc.makeApiClient(k8s.CustomObjectsApi);
    const plural = 'cachedimages';
    const listFn = () =>
      api.listClusterCustomObject({ group: API_GROUP, version: API_VERSION, plural }) as Promise<KubernetesListObject<KubernetesObject>>;
    const informer = k8s.makeInformer(kc, `/apis/${API_GROUP}/${API_VERSION}/${plural}`, listFn);
    informer.on('add', (o) => this.apply('add', o));
    informer.on('update', (o) => this.apply('update', o));
    informer.on('delete', (o) => this.apply('delete', o));
    informer.on('connect', () => {
      this.hasSynced = true;
    });
    informer.on('error', (err: unknown) => {
      this.logger.error({ err }, 'CachedImage informer failed; restarting in 5s');
      setTimeout(() => void informer.start().catch(() => undefined), 5000).unref();
    });
    await informer.start();
    this.hasSynced = true;
    this.stopFn = () => informer.stop();
  }

  async stop(): Promise<void> {
    await this.stopFn?.();
  }
}
