import { EventEmitter } from 'node:events';
import type { KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from '../log.js';
import { paths, type KubeApi } from './api.js';
import { ResilientInformer } from './informer.js';
import { LAUNCHER_LABEL, LAUNCHER_LABEL_VALUE, VMI_MIGRATION_TARGET_LABEL, VMI_NODE_LABEL } from './mapping.js';
import { PodSlotPoller, type SlotLister } from './pod-slots.js';
import type { PodSlot } from './podresources.js';

/** What the node's desired state is built from: the informer caches and the kubelet's slots, as they are now. */
export interface NodeViewInput {
  /** VMIs on this node (label `kubevirt.io/nodeName`), raw from the API. */
  vmis: readonly KubernetesObject[];
  /** VMIs migrating to this node (label `kubevirt.io/migrationTargetNodeName`). */
  migrationTargets: readonly KubernetesObject[];
  /** Launcher pods on this node. */
  pods: readonly KubernetesObject[];
  podSlots: readonly PodSlot[];
  cachedImages: readonly KubernetesObject[];
  /** Every node's NodeImageCache: which node holds which golden, exported where, hydrating from whom. */
  nodeImageCaches: readonly KubernetesObject[];
}

export interface NodeViewOptions {
  node: string;
  /** The API client; its kubeConfig also serves the watches. */
  api: KubeApi;
  podResources: SlotLister;
  logger: Logger;
  podResourcesPollMs?: number;
  /** Backoff of informer restarts. */
  retry?: { initialMs: number; maxMs: number };
  /** Coalesces bursts of watch events into one `change`. */
  debounceMs?: number;
}

/**
 * The cluster as this node's agent sees it: informers on the node's VMIs, the VMIs migrating
 * here, the node's launcher pods, the CachedImage catalog and every node's NodeImageCache (peer
 * image sources), plus PodResources for pod -> slot.
 * Emits `change` (debounced) when any of it changed, and `api-up` when a watch reconnected.
 * The informers keep their last objects while the API server is away, so `input()` is never
 * a partial or empty view once `synced`.
 */
export class NodeView extends EventEmitter {
  private readonly vmis: ResilientInformer<KubernetesObject>;
  private readonly targets: ResilientInformer<KubernetesObject>;
  private readonly pods: ResilientInformer<KubernetesObject>;
  private readonly cachedImages: ResilientInformer<KubernetesObject>;
  private readonly nodeImageCaches: ResilientInformer<KubernetesObject>;
  private readonly informers: ResilientInformer<KubernetesObject>[];
  private readonly slots: PodSlotPoller;
  private debounce: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly opts: NodeViewOptions) {
    super();
    const { api, node } = opts;
    const base = { kubeConfig: api.kubeConfig, logger: opts.logger, ...(opts.retry ? { backoff: opts.retry } : {}) };
    this.vmis = new ResilientInformer({ ...base, name: 'vmis', path: paths.vmis, list: api.listVmis(`${VMI_NODE_LABEL}=${node}`), labelSelector: `${VMI_NODE_LABEL}=${node}` });
    this.targets = new ResilientInformer({
      ...base,
      name: 'migration-target-vmis',
      path: paths.vmis,
      list: api.listVmis(`${VMI_MIGRATION_TARGET_LABEL}=${node}`),
      labelSelector: `${VMI_MIGRATION_TARGET_LABEL}=${node}`,
    });
    const podLabels = `${LAUNCHER_LABEL}=${LAUNCHER_LABEL_VALUE}`;
    const podFields = `spec.nodeName=${node}`;
    this.pods = new ResilientInformer({ ...base, name: 'launcher-pods', path: paths.pods, list: api.listPods(podLabels, podFields), labelSelector: podLabels, fieldSelector: podFields });
    this.cachedImages = new ResilientInformer({ ...base, name: 'cachedimages', path: paths.cachedImages, list: api.listCachedImages });
    this.nodeImageCaches = new ResilientInformer({ ...base, name: 'nodeimagecaches', path: paths.nodeImageCaches, list: api.listNodeImageCaches });
    this.informers = [this.vmis, this.targets, this.pods, this.cachedImages, this.nodeImageCaches];
    this.slots = new PodSlotPoller({ podResources: opts.podResources, logger: opts.logger, ...(opts.podResourcesPollMs !== undefined ? { pollMs: opts.podResourcesPollMs } : {}) });
  }

  /** Starts the informers and the PodResources poll. Does not wait for the API server. */
  async start(): Promise<void> {
    for (const inf of this.informers) {
      inf.on('change', () => this.changed());
      inf.on('synced', () => this.changed());
      inf.on('health', (up: boolean) => {
        if (up) this.emit('api-up');
      });
    }
    // A launcher pod came or went: its slot may have changed too.
    this.pods.on('change', () => void this.slots.poll());
    this.slots.on('change', () => this.changed());
    await Promise.all([this.slots.start(), ...this.informers.map((i) => i.start())]);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.debounce);
    await Promise.all(this.informers.map((i) => i.stop()));
    await this.slots.stop();
  }

  /** Every informer listed once and PodResources answered once: the view is complete. */
  get synced(): boolean {
    return this.informers.every((i) => i.synced) && this.slots.ok !== undefined;
  }

  /** Why the view is incomplete or stale, or undefined when it is current. */
  notCurrent(): string | undefined {
    const unsynced = this.informers.filter((i) => !i.synced).map((i) => i.name);
    if (unsynced.length) return `waiting for the first list of ${unsynced.join(', ')}`;
    if (this.slots.ok === undefined) return 'waiting for the kubelet PodResources API';
    const down = this.informers.filter((i) => !i.connected);
    if (down.length) return `API server unreachable (${down.map((i) => `${i.name}: ${i.lastError ?? 'disconnected'}`).join('; ')}); serving the last known state`;
    if (!this.slots.ok) return `kubelet PodResources API unreachable: ${this.slots.lastError ?? ''}`;
    return undefined;
  }

  input(): NodeViewInput {
    return { vmis: this.vmis.list(), migrationTargets: this.targets.list(), pods: this.pods.list(), podSlots: this.slots.slots, cachedImages: this.cachedImages.list(), nodeImageCaches: this.nodeImageCaches.list() };
  }

  /** The VMI on this node with `uid`, as the informer has it now. */
  vmiOnNode(uid: string): KubernetesObject | undefined {
    return this.vmis.list().find((v) => v.metadata?.uid === uid);
  }

  /** Emits `change` soon (also when something outside the view changed what it is made into). */
  changed(): void {
    if (this.stopped) return;
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.emit('change'), this.opts.debounceMs ?? 50);
  }
}
