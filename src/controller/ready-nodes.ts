import type { KubernetesObject } from '@kubernetes/client-node';
import { paths, type KubeApi } from '../kube/api.js';
import { ResilientInformer } from '../kube/informer.js';
import { Outbox } from '../kube/outbox.js';
import type { Logger } from '../log.js';
import { LeaderElector, type LeaderElectorOptions } from './leader.js';
import { imageStatusUpdates, type ImageStatusPatch } from './image-status.js';

/** The Lease whose holder is the one writer of `CachedImage.status` (readyNodes, readyNodeNames, prefetchNodes). */
export const READY_NODES_LEASE = 'kubevirt-spdk-ready-nodes';

export interface ReadyNodesOptions {
  api: KubeApi;
  logger: Logger;
  /** Backoff of informer restarts and of failed writes. */
  retry?: { initialMs: number; maxMs: number };
}

/**
 * Keeps `CachedImage.status` up to date from the NodeImageCaches (one per node, written by that
 * node's agent) and the Nodes: `readyNodes` = the number of nodes that list the image ready,
 * `readyNodeNames` = a bounded, stable subset of them (cache-aware placement in the webhook),
 * `prefetchNodes` = the nodes that warm it for `spec.prefetch` (image-status.ts decides).
 * Cluster-wide, so exactly one writer: the informers run on every replica (a new leader starts
 * warm), writes happen only between `lead()` and `follow()`, which the leader election calls.
 */
export class ReadyNodesController {
  private readonly cachedImages: ResilientInformer<KubernetesObject>;
  private readonly nodeCaches: ResilientInformer<KubernetesObject>;
  private readonly nodes: ResilientInformer<KubernetesObject>;
  /** Exists only while leading: writes queued by a former leader are dropped with it. */
  private outbox: Outbox | undefined;
  private readonly log: Logger;

  constructor(private readonly opts: ReadyNodesOptions) {
    this.log = opts.logger.child({ component: 'ready-nodes' });
    const base = { kubeConfig: opts.api.kubeConfig, logger: this.log, ...(opts.retry ? { backoff: opts.retry } : {}) };
    this.cachedImages = new ResilientInformer({ ...base, name: 'cachedimages', path: paths.cachedImages, list: opts.api.listCachedImages });
    this.nodeCaches = new ResilientInformer({ ...base, name: 'nodeimagecaches', path: paths.nodeImageCaches, list: opts.api.listNodeImageCaches });
    this.nodes = new ResilientInformer({ ...base, name: 'nodes', path: paths.nodes, list: opts.api.listNodes() });
  }

  private get informers(): Array<ResilientInformer<KubernetesObject>> {
    return [this.cachedImages, this.nodeCaches, this.nodes];
  }

  get leading(): boolean {
    return this.outbox !== undefined;
  }

  async start(): Promise<void> {
    for (const inf of this.informers) {
      inf.on('change', () => this.sync());
      inf.on('synced', () => this.sync());
      inf.on('health', (up: boolean) => {
        if (up) this.outbox?.retryNow();
      });
    }
    await Promise.all(this.informers.map((i) => i.start()));
  }

  async stop(): Promise<void> {
    await this.follow();
    await Promise.all(this.informers.map((i) => i.stop()));
  }

  /** This replica is the writer now: bring every CachedImage up to date. */
  lead(): void {
    if (this.outbox) return;
    this.outbox = new Outbox(this.log, this.opts.retry);
    this.sync();
  }

  /** Another replica may be the writer now: drop what is queued, finish nothing new. */
  async follow(): Promise<void> {
    const box = this.outbox;
    this.outbox = undefined;
    await box?.close();
  }

  /** Pending writes done (tests). */
  async drain(): Promise<void> {
    await this.outbox?.drain();
  }

  /**
   * Recomputed on every change of any informer (prefetch choices depend on every image), so a
   * queued write always sends the newest wanted status, never an older one over a later change.
   */
  private wanted = new Map<string, ImageStatusPatch>();

  private sync(): void {
    const box = this.outbox;
    if (!box || !this.informers.every((i) => i.synced)) return;
    const updates = imageStatusUpdates(this.cachedImages.list(), this.nodeCaches.list(), this.nodes.list());
    this.wanted = new Map(updates.map((u) => [u.name, u.status]));
    for (const { name } of updates) {
      box.put(`image-status:${name}`, async () => {
        const status = this.wanted.get(name);
        if (this.outbox !== box || !status) return;
        await this.opts.api.patchCachedImageStatus(name, status);
        this.log.debug({ event: 'image-status-patched', image: name, ...status }, 'CachedImage status updated');
      });
    }
  }
}

export interface ReadyNodesElectedOptions extends Omit<LeaderElectorOptions, 'name' | 'api' | 'logger'> {
  api: KubeApi;
  logger: Logger;
  retry?: { initialMs: number; maxMs: number };
}

/** The controller behind leader election on READY_NODES_LEASE: what a replica of the webhook runs. */
export async function startReadyNodes(o: ReadyNodesElectedOptions): Promise<{ controller: ReadyNodesController; elector: LeaderElector; stop(): Promise<void> }> {
  const { api, logger, retry, ...election } = o;
  const controller = new ReadyNodesController({ api, logger, ...(retry ? { retry } : {}) });
  const elector = new LeaderElector({ ...election, api, logger, name: READY_NODES_LEASE });
  elector.on('leading', () => controller.lead());
  elector.on('following', () => void controller.follow());
  await controller.start();
  elector.start();
  return {
    controller,
    elector,
    stop: async () => {
      await elector.stop();
      await controller.stop();
    },
  };
}
