import type { KubeConfig, KubernetesObject } from '@kubernetes/client-node';
import type { VmiRef, VmiStatus } from '../api/status.js';
import { NodeAgent, type NodeAgentOptions } from '../agent/agent.js';
import type { Logger } from '../log.js';
import type { NodeMigrationIntent } from '../migration/coordinator.js';
import { KubeApi, isNotFound, paths } from './api.js';
import { ResilientInformer, errorText } from './informer.js';
import {
  LAUNCHER_LABEL,
  LAUNCHER_LABEL_VALUE,
  VMI_MIGRATION_TARGET_LABEL,
  VMI_NODE_LABEL,
  clusterDesired,
  eventBody,
  eventsFor,
  newEvents,
  nodeImageCacheStatus,
  readyNodeCounts,
  readyNodesUpdates,
  sameCacheStatus,
  vmiStatusPatch,
  type NodeImageCacheStatus,
} from './mapping.js';
import { Outbox } from './outbox.js';
import type { PodSlot } from './podresources.js';

/** What cluster mode needs of the kubelet's PodResources API (PodResourcesClient). */
export interface SlotLister {
  listSlots(timeoutMs?: number): Promise<PodSlot[]>;
  close(): void;
}

/** The cluster as this node's agent sees it, handed to the migration seam after each refresh. */
export interface ClusterSnapshot {
  /** VMIs on this node (label `kubevirt.io/nodeName`), raw from the API. */
  vmis: readonly KubernetesObject[];
  /** VMIs migrating to this node (label `kubevirt.io/migrationTargetNodeName`). */
  migrationTargets: readonly KubernetesObject[];
  /** VMI uid -> slot on this node (a migration target's slot once its pod has one). */
  slots: ReadonlyMap<string, string>;
}

export interface ClusterAgentOptions {
  node: string;
  kubeConfig: KubeConfig;
  podResources: SlotLister;
  /** Everything the NodeAgent needs except what cluster mode supplies (status hook, node). */
  agent: Omit<NodeAgentOptions, 'onVmiStatus' | 'node' | 'logger'>;
  /** Bound to the node by the caller (the CLI does). */
  logger: Logger;
  /** Periodic PodResources poll, besides the one on every launcher pod event. */
  podResourcesPollMs?: number;
  /** Backoff of informer restarts and of failed writes. */
  retry?: { initialMs: number; maxMs: number };
  /** Coalesces bursts of watch events into one desired-state build. */
  debounceMs?: number;
  /** The NodeImageCache is rewritten at least this often, so its updatedAt shows the agent is alive. */
  cacheHeartbeatMs?: number;
  /** Migration seam: called after every refresh with the VMIs on and migrating to this node. */
  onSnapshot?: (s: ClusterSnapshot) => void;
  /** Migration seam: the node's migration intent (VMIs served from another node, handed over, exports), part of the node view. */
  migrationIntent?: (onNode: readonly KubernetesObject[]) => NodeMigrationIntent;
}

/**
 * Cluster mode of the node agent: informers on the node's VMIs, launcher pods, CachedImages and
 * NodeImageCaches, PodResources for pod -> slot, the pure mapping (mapping.ts) to a DesiredState,
 * and the writes back (status annotation, Events, NodeImageCache, CachedImage readyNodes).
 * The NodeAgent sees a desired state only once every informer has listed at least once, and
 * keeps the last one while the API server is away: a partial or empty view never deletes disks.
 */
export class ClusterAgent {
  readonly agent: NodeAgent;
  readonly api: KubeApi;
  private readonly log: Logger;
  private readonly outbox: Outbox;
  private readonly vmis: ResilientInformer<KubernetesObject>;
  private readonly targets: ResilientInformer<KubernetesObject>;
  private readonly pods: ResilientInformer<KubernetesObject>;
  private readonly cachedImages: ResilientInformer<KubernetesObject>;
  private readonly nodeCaches: ResilientInformer<KubernetesObject>;
  private readonly informers: ResilientInformer<KubernetesObject>[];
  private podSlots: PodSlot[] = [];
  private podResourcesOk: boolean | undefined;
  private podResourcesError: string | undefined;
  private slots = new Map<string, string>();
  private desiredKey: string | undefined;
  private started = false;
  private stopped = false;
  private debounce: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private pollAgain = false;
  private readonly emitted = new Map<string, Set<string>>();
  private readonly lastStatus = new Map<string, { vmi: VmiRef; status: VmiStatus }>();
  private cacheWritten: { status: NodeImageCacheStatus; at: number } | undefined;
  private waitingLogged = false;

  constructor(private readonly opts: ClusterAgentOptions) {
    this.log = opts.logger;
    this.api = new KubeApi(opts.kubeConfig);
    this.outbox = new Outbox(this.log, opts.retry);
    this.agent = new NodeAgent({ ...opts.agent, node: opts.node, logger: this.log, onVmiStatus: (vmi, status, problems) => this.onVmiStatus(vmi, status, problems) });
    const base = { kubeConfig: opts.kubeConfig, logger: this.log, ...(opts.retry ? { backoff: opts.retry } : {}) };
    this.vmis = new ResilientInformer({ ...base, name: 'vmis', path: paths.vmis, list: this.api.listVmis(`${VMI_NODE_LABEL}=${opts.node}`), labelSelector: `${VMI_NODE_LABEL}=${opts.node}` });
    this.targets = new ResilientInformer({
      ...base,
      name: 'migration-target-vmis',
      path: paths.vmis,
      list: this.api.listVmis(`${VMI_MIGRATION_TARGET_LABEL}=${opts.node}`),
      labelSelector: `${VMI_MIGRATION_TARGET_LABEL}=${opts.node}`,
    });
    const podLabels = `${LAUNCHER_LABEL}=${LAUNCHER_LABEL_VALUE}`;
    const podFields = `spec.nodeName=${opts.node}`;
    this.pods = new ResilientInformer({ ...base, name: 'launcher-pods', path: paths.pods, list: this.api.listPods(podLabels, podFields), labelSelector: podLabels, fieldSelector: podFields });
    this.cachedImages = new ResilientInformer({ ...base, name: 'cachedimages', path: paths.cachedImages, list: this.api.listCachedImages });
    this.nodeCaches = new ResilientInformer({ ...base, name: 'nodeimagecaches', path: paths.nodeImageCaches, list: this.api.listNodeImageCaches });
    this.informers = [this.vmis, this.targets, this.pods, this.cachedImages, this.nodeCaches];
  }

  /** Opens the journal, starts informers and the PodResources poll. Does not wait for the API server. */
  async start(): Promise<void> {
    await this.agent.init();
    this.agent.on('reconciled', () => this.publishCache());
    for (const inf of this.informers) {
      inf.on('change', () => this.schedule());
      inf.on('synced', () => this.schedule());
      inf.on('health', (up: boolean) => {
        if (up) this.outbox.retryNow();
      });
    }
    this.pods.on('change', () => void this.pollSlots());
    for (const inf of [this.cachedImages, this.nodeCaches]) {
      inf.on('change', () => this.syncReadyNodes());
      inf.on('synced', () => this.syncReadyNodes());
    }
    const every = this.opts.podResourcesPollMs ?? 10_000;
    this.pollTimer = setInterval(() => void this.pollSlots(), every);
    await Promise.all([this.pollSlots(), ...this.informers.map((i) => i.start())]);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.debounce);
    clearInterval(this.pollTimer);
    await Promise.all(this.informers.map((i) => i.stop()));
    await this.polling;
    await this.agent.stop();
    await this.outbox.close();
    this.opts.podResources.close();
  }

  /** Every informer listed once and PodResources answered once: the view is complete. */
  get synced(): boolean {
    return this.informers.every((i) => i.synced) && this.podResourcesOk !== undefined;
  }

  /** For /readyz: true, or why not. */
  ready = (): true | string => {
    const unsynced = this.informers.filter((i) => !i.synced).map((i) => i.name);
    if (unsynced.length) return `waiting for the first list of ${unsynced.join(', ')}`;
    if (this.podResourcesOk === undefined) return 'waiting for the kubelet PodResources API';
    const down = this.informers.filter((i) => !i.connected);
    if (down.length) return `API server unreachable (${down.map((i) => `${i.name}: ${i.lastError ?? 'disconnected'}`).join('; ')}); serving the last known state`;
    if (!this.podResourcesOk) return `kubelet PodResources API unreachable: ${this.podResourcesError ?? ''}`;
    if (this.agent.lastReport && !this.agent.lastReport.backendOk) return 'storage backend unavailable';
    return true;
  };

  /** Pending API writes drained (tests). */
  flushWrites(): Promise<void> {
    return this.outbox.drain();
  }

  private schedule(): void {
    if (this.stopped) return;
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.refresh(), this.opts.debounceMs ?? 50);
  }

  private async pollSlots(): Promise<void> {
    if (this.polling) {
      this.pollAgain = true;
      return this.polling;
    }
    this.polling = (async () => {
      do {
        this.pollAgain = false;
        try {
          const slots = await this.opts.podResources.listSlots();
          if (this.podResourcesOk !== true) this.log.info({ event: 'podresources-ok' }, 'PodResources API answered');
          const changed = this.podResourcesOk === undefined || JSON.stringify(slots) !== JSON.stringify(this.podSlots);
          this.podResourcesOk = true;
          this.podResourcesError = undefined;
          this.podSlots = slots;
          if (changed) this.schedule();
        } catch (e) {
          // Keep the last known slots: a kubelet restart must not look like every pod left.
          if (this.podResourcesOk !== false) this.log.warn({ event: 'podresources-failed', error: errorText(e) }, 'PodResources API failed; keeping the last known slots');
          if (this.podResourcesOk === true) this.podResourcesOk = false;
          this.podResourcesError = errorText(e);
        }
      } while (this.pollAgain && !this.stopped);
    })().finally(() => {
      this.polling = undefined;
    });
    return this.polling;
  }

  private refresh(): void {
    if (this.stopped) return;
    if (!this.synced) {
      if (!this.waitingLogged) this.log.info({ event: 'waiting-for-sync', why: this.ready() }, 'not acting before the view of the cluster is complete');
      this.waitingLogged = true;
      return;
    }
    const vmis = this.vmis.list();
    const migrationTargets = this.targets.list();
    const { desired, slots } = clusterDesired({
      vmis,
      migrationTargets,
      ...(this.opts.migrationIntent ? { migration: this.opts.migrationIntent(vmis) } : {}),
      pods: this.pods.list(),
      podSlots: this.podSlots,
      cachedImages: this.cachedImages.list(),
      lastSlots: this.slots,
      slotHolder: this.agent.slotHolder,
    });
    // Slots come from the launcher pods on this node: a migration target's from its target pod.
    this.slots = slots;
    const present = new Set(desired.vmis.map((v) => v.ref.uid));
    for (const uid of this.emitted.keys()) if (!present.has(uid)) this.emitted.delete(uid);
    for (const uid of this.lastStatus.keys()) if (!present.has(uid)) this.lastStatus.delete(uid);
    // A status reported while the VMI was not on this node yet (a migration target) was not
    // written; once the VMI arrives here it is.
    for (const v of vmis) {
      const last = v.metadata?.uid !== undefined ? this.lastStatus.get(v.metadata.uid) : undefined;
      if (last && vmiStatusPatch(v.metadata?.annotations, last.status)) this.putStatus(last.vmi, last.status);
    }
    const key = JSON.stringify(desired);
    if (key !== this.desiredKey) {
      this.desiredKey = key;
      this.agent.setDesired(desired);
      this.log.info({ event: 'desired-changed', vmis: desired.vmis.length, images: desired.images.length }, 'desired state changed');
      if (!this.started) {
        // Only now may the agent act on its own (resync, backend reconnects): it has a full view.
        this.started = true;
        this.agent.start();
      }
      void this.agent.reconcile('desired-changed').catch((e: unknown) => this.log.error({ event: 'reconcile-failed', error: errorText(e) }, 'reconcile failed'));
    }
    this.opts.onSnapshot?.({ vmis, migrationTargets, slots });
  }

  /** Rebuilds the desired state soon (the migration seam changed what it is made of). */
  resync(): void {
    this.desiredKey = undefined;
    this.schedule();
  }

  private currentVmi(ref: VmiRef): KubernetesObject | undefined {
    const o = this.vmis.list().find((v) => v.metadata?.uid === ref.uid);
    return o;
  }

  private onVmiStatus(vmi: VmiRef, status: VmiStatus, problems: string[]): void {
    const log = this.log.child({ vmi: `${vmi.namespace}/${vmi.name}`, uid: vmi.uid });
    this.lastStatus.set(vmi.uid, { vmi, status });
    this.putStatus(vmi, status);
    const planned = eventsFor(status, problems);
    const fresh = newEvents(this.emitted.get(vmi.uid) ?? new Set(), planned);
    this.emitted.set(vmi.uid, new Set(planned.map((e) => e.key)));
    for (const e of fresh) {
      const body = eventBody(vmi, e, this.opts.node, new Date());
      log.warn({ event: 'vmi-event', reason: e.reason, message: e.message }, 'reporting a failure on the VMI');
      this.outbox.put(`event:${vmi.uid}:${e.key}`, () => this.api.createEvent(body));
    }
  }

  private putStatus(vmi: VmiRef, status: VmiStatus): void {
    const log = this.log.child({ vmi: `${vmi.namespace}/${vmi.name}`, uid: vmi.uid });
    this.outbox.put(`status:${vmi.uid}`, async () => {
      const cur = this.currentVmi(vmi);
      if (!cur) return; // Deleted meanwhile: nothing to report on.
      const patch = vmiStatusPatch(cur.metadata?.annotations, status);
      if (!patch) return;
      await this.api.patchVmi(vmi.namespace, vmi.name, patch);
      log.debug({ event: 'status-patched', disks: status.disks.map((d) => `${d.name}=${d.phase}`) }, 'VMI status annotation updated');
    });
  }

  /** Rewrites the NodeImageCache when the node's cache changed (or as a heartbeat). */
  private publishCache(): void {
    const node = this.agent.lastNodeStatus;
    if (!node) return;
    const status = nodeImageCacheStatus(node, new Date().toISOString());
    const heartbeat = this.opts.cacheHeartbeatMs ?? 10 * 60_000;
    const prev = this.cacheWritten;
    if (prev && sameCacheStatus(prev.status, status) && Date.now() - prev.at < heartbeat) return;
    this.cacheWritten = { status, at: Date.now() };
    this.outbox.put('nodeimagecache', async () => {
      await this.api.ensureNodeImageCache(this.opts.node);
      try {
        await this.api.patchNodeImageCacheStatus(this.opts.node, status);
      } catch (e) {
        // Deleted between the two calls: the next round creates it again.
        if (isNotFound(e)) this.cacheWritten = undefined;
        throw e;
      }
    });
  }

  /** Keeps `CachedImage.status.readyNodes` equal to the NodeImageCaches that list it ready. */
  private syncReadyNodes(): void {
    if (!this.cachedImages.synced || !this.nodeCaches.synced) return;
    for (const { name } of readyNodesUpdates(this.cachedImages.list(), readyNodeCounts(this.nodeCaches.list()))) {
      // Recomputed when the write runs: a later change must not be overwritten by this one.
      this.outbox.put(`readynodes:${name}`, async () => {
        const update = readyNodesUpdates(
          this.cachedImages.list().filter((i) => i.metadata?.name === name),
          readyNodeCounts(this.nodeCaches.list()),
        )[0];
        if (update) await this.api.patchCachedImageStatus(name, { readyNodes: update.readyNodes });
      });
    }
  }
}
