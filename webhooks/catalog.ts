import { readFile } from 'node:fs/promises';
import { parseCachedImages, CachedImageSchema, cachedImageStatusOf, type CachedImage } from '../src/api/cachedimage.js';
import { formatZodError } from '../src/api/errors.js';
import type { Logger } from '../src/log.js';
import type { KubeConfig } from '@kubernetes/client-node';

/** What the webhook needs to know about a CachedImage. */
export interface CatalogEntry {
  /** Virtual size when the CachedImage states it; unknown sizes are checked on the node. */
  sizeBytes?: number;
  /**
   * Nodes that hold the image ready (`status.readyNodeNames`, bounded, written by the
   * cluster-wide controller): the VMI prefers them. Absent in a file catalog.
   */
  readyNodeNames?: readonly string[];
}

/** Read-only view of the cluster's CachedImages. */
export interface ImageCatalog {
  get(name: string): CatalogEntry | undefined;
  /** False until the first full list arrived: answers before that would be wrong. */
  synced(): boolean;
}

function entryOf(img: CachedImage, raw?: unknown): CatalogEntry {
  const names = raw === undefined ? undefined : cachedImageStatusOf(raw).readyNodeNames;
  return { ...(img.spec.size === undefined ? {} : { sizeBytes: img.spec.size }), ...(names?.length ? { readyNodeNames: names } : {}) };
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
 * What the informer catalog reads from: the cluster mode's `ResilientInformer` on the
 * CachedImage CRD, or a stand-in in tests.
 */
export interface CachedImageSource {
  /** True once a full list was applied: before that, an absent image may merely be unlisted. */
  readonly synced: boolean;
  list(): readonly unknown[];
  on(event: 'change', listener: () => void): unknown;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * The catalog kept by an informer on the cluster-scoped CachedImage CRD. A CachedImage that
 * fails the schema is left out (and logged once per version): admitting a VMI against it
 * would fail on the node anyway, and the webhook then says the image does not exist.
 */
export class InformerImageCatalog implements ImageCatalog {
  private entries = new Map<string, CatalogEntry>();
  /** Rebuilt on the next read, not per event: the first list arrives as one event per object. */
  private stale = true;
  /** `name@resourceVersion` of the invalid objects already logged. */
  private warned = new Set<string>();

  constructor(
    private readonly source: CachedImageSource,
    private readonly logger: Logger,
  ) {
    source.on('change', () => {
      this.stale = true;
    });
  }

  /**
   * The catalog of the cluster's CachedImages, on the same informer as the agent's cluster mode.
   * Without a kubeConfig: in-cluster config, else KUBECONFIG. Not started.
   */
  static async forCluster(logger: Logger, opts: { kubeConfig?: KubeConfig; backoff?: { initialMs: number; maxMs: number } } = {}): Promise<InformerImageCatalog> {
    // Loaded lazily: standalone mode and tests of the webhook never need the Kubernetes client.
    const [{ KubeApi, loadKubeConfig, paths }, { ResilientInformer }] = await Promise.all([import('../src/kube/api.js'), import('../src/kube/informer.js')]);
    const kubeConfig = opts.kubeConfig ?? loadKubeConfig();
    const api = new KubeApi(kubeConfig);
    const informer = new ResilientInformer({
      name: 'cachedimages',
      kubeConfig,
      path: paths.cachedImages,
      list: api.listCachedImages,
      logger,
      ...(opts.backoff ? { backoff: opts.backoff } : {}),
    });
    return new InformerImageCatalog(informer, logger);
  }

  get(name: string): CatalogEntry | undefined {
    if (this.stale) this.rebuild();
    return this.entries.get(name);
  }
  synced(): boolean {
    return this.source.synced;
  }

  /** Starts listing and watching; never throws (the informer retries in the background). */
  start(): Promise<void> {
    return this.source.start();
  }
  stop(): Promise<void> {
    return this.source.stop();
  }

  private rebuild(): void {
    const entries = new Map<string, CatalogEntry>();
    const invalid = new Set<string>();
    for (const obj of this.source.list()) {
      const meta = (obj as { metadata?: { name?: unknown; resourceVersion?: unknown } } | null)?.metadata;
      if (typeof meta?.name !== 'string') continue;
      const res = CachedImageSchema.safeParse(obj);
      if (res.success) {
        entries.set(meta.name, entryOf(res.data, obj));
        continue;
      }
      const version = `${meta.name}@${String(meta.resourceVersion)}`;
      invalid.add(version);
      if (!this.warned.has(version)) this.logger.warn({ image: meta.name, problems: formatZodError(`cachedimage ${meta.name}`, res.error) }, 'ignoring invalid CachedImage');
    }
    this.entries = entries;
    this.warned = invalid;
    this.stale = false;
  }
}
