import type { KubeConfig, KubernetesObject } from '@kubernetes/client-node';
import { NodeAgent, type NodeAgentOptions } from '../agent/agent.js';
import type { Logger } from '../log.js';
import { KubeApi } from './api.js';
import { errorText } from './informer.js';
import type { NodeMigrationIntent } from '../migration/coordinator.js';
import { clusterDesired, peerGoldensOf, type ClusterDesired } from './mapping.js';
import { ImagePeers } from '../agent/image-peers.js';
import { BootProfiles } from '../agent/boot-profile.js';
import type { ListenAddress } from '../backend/remote.js';
import { NodeView, type NodeViewInput } from './node-view.js';
import type { SlotLister } from './pod-slots.js';
import { StatusPublisher } from './status-publisher.js';
import { imagesToWarm } from '../agent/warm.js';

export type { SlotLister } from './pod-slots.js';

/** The cluster as this node's agent sees it, handed to the migration seam after each refresh. */
export interface ClusterSnapshot {
  /** VMIs on this node (label `kubevirt.io/nodeName`), raw from the API. */
  vmis: readonly KubernetesObject[];
  /** VMIs migrating to this node (label `kubevirt.io/migrationTargetNodeName`). */
  migrationTargets: readonly KubernetesObject[];
  /** VMI uid -> slot on this node (a migration target's slot once its pod has one). */
  slots: ReadonlyMap<string, string>;
  /** Every node's NodeImageCache (a migration target says there which disks stand alone); absent: none seen. */
  nodeImageCaches?: readonly KubernetesObject[];
}

/** Timing and the migration seams: the same whether cluster mode builds its parts or is given them. */
export interface ClusterWiring {
  node: string;
  podResources: SlotLister;
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
  /** Where this node serves its goldens to the other nodes (`--node-address`/NODE_IP); none: it serves no peer. */
  imageExportAddress?: ListenAddress;
  /** The seed rule (`--seed-wait`, `--seed-settle`): how long a node waits for the one node that reads the origin for all; absent or 0: off. */
  imageSeed?: { waitMs: number; settleMs?: number };
}

/** Cluster mode from configuration: `clusterParts` builds the API client, publisher and NodeAgent. */
export interface ClusterAgentOptions extends ClusterWiring {
  kubeConfig: KubeConfig;
  /** Everything the NodeAgent needs except what cluster mode supplies (status hook, node). */
  agent: Omit<NodeAgentOptions, 'onVmiStatus' | 'node' | 'logger'>;
}

/** Cluster mode from built parts: the NodeAgent's `onVmiStatus` must be `status.onVmiStatus`. */
export interface ClusterParts extends ClusterWiring {
  api: KubeApi;
  agent: NodeAgent;
  status: StatusPublisher;
  /** Peer image distribution; the NodeAgent must have been given the same object as `peers`. */
  peers?: ImagePeers;
  /** Boot profiles read from NodeImageCaches; the NodeAgent must have been given the same object. */
  bootProfiles?: BootProfiles;
}

/** The parts cluster mode needs, built from configuration (the one place they are constructed). */
export function clusterParts(o: ClusterAgentOptions): ClusterParts {
  const api = new KubeApi(o.kubeConfig);
  const status = new StatusPublisher({
    node: o.node,
    api,
    logger: o.logger,
    ...(o.retry ? { retry: o.retry } : {}),
    ...(o.cacheHeartbeatMs !== undefined ? { cacheHeartbeatMs: o.cacheHeartbeatMs } : {}),
  });
  const peers = new ImagePeers({
    self: o.node,
    backend: o.agent.backend,
    stateDir: o.agent.stateDir,
    logger: o.logger,
    ...(o.imageExportAddress ? { exportAddress: o.imageExportAddress } : {}),
    ...(o.imageSeed?.waitMs ? { seed: o.imageSeed } : {}),
  });
  const bootProfiles = new BootProfiles(o.logger);
  const agent = new NodeAgent({ ...o.agent, node: o.node, logger: o.logger, onVmiStatus: status.onVmiStatus, peers, bootProfiles });
  const { kubeConfig: _kc, agent: _agentOptions, ...wiring } = o;
  return { ...wiring, api, agent, status, peers, bootProfiles };
}

const isOptions = (o: ClusterAgentOptions | ClusterParts): o is ClusterAgentOptions => 'kubeConfig' in o;

/**
 * Cluster mode of the node agent, the composition root: the node view (node-view.ts: informers
 * + PodResources) feeds the desired state (mapping.ts) to the NodeAgent; the agent's reports
 * go back through the status publisher (status-publisher.ts). The NodeAgent sees a desired
 * state only once the view is complete, and keeps the last one while the API server is away:
 * a partial or empty view never deletes disks. CachedImage `readyNodes` is not written here
 * (one cluster-wide writer: src/controller/ready-nodes.ts).
 */
export class ClusterAgent {
  readonly agent: NodeAgent;
  readonly api: KubeApi;
  private readonly status: StatusPublisher;
  private readonly view: NodeView;
  private readonly log: Logger;
  private readonly wiring: ClusterWiring;
  private readonly peers: ImagePeers | undefined;
  private readonly bootProfiles: BootProfiles | undefined;
  private imageNames: Readonly<Record<string, readonly string[]>> = {};
  private slots = new Map<string, string>();
  private desiredKey: string | undefined;
  private started = false;
  private stopped = false;
  private waitingLogged = false;

  constructor(o: ClusterAgentOptions | ClusterParts) {
    const parts = isOptions(o) ? clusterParts(o) : o;
    this.wiring = parts;
    this.agent = parts.agent;
    this.api = parts.api;
    this.status = parts.status;
    this.peers = parts.peers;
    this.bootProfiles = parts.bootProfiles;
    this.log = parts.logger;
    this.view = new NodeView({
      node: parts.node,
      api: parts.api,
      podResources: parts.podResources,
      logger: parts.logger,
      ...(parts.podResourcesPollMs !== undefined ? { podResourcesPollMs: parts.podResourcesPollMs } : {}),
      ...(parts.retry ? { retry: parts.retry } : {}),
      ...(parts.debounceMs !== undefined ? { debounceMs: parts.debounceMs } : {}),
    });
    this.status.bind({ vmiOnNode: (uid) => this.view.vmiOnNode(uid) });
  }

  /** Opens the journal, starts the node view. Does not wait for the API server. */
  async start(): Promise<void> {
    await this.agent.init();
    this.agent.on('reconciled', () => this.publishCache());
    // An announcement (seed rule) is published at once: the other nodes choose the seed from it.
    this.peers?.onAnnounce(() => this.publishCache());
    this.view.on('change', () => this.refresh());
    this.view.on('api-up', () => this.status.retryNow());
    await this.view.start();
  }

  private publishCache(): void {
    const peers = this.peers ? { info: this.peers.published(), wanted: this.peers.wanting() } : {};
    this.status.publishCache(this.agent.lastNodeStatus, { names: this.imageNames, ...peers });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.view.stop();
    await this.agent.stop();
    await this.status.close();
  }

  /** The view of the cluster is complete (every informer listed once, PodResources answered once). */
  get synced(): boolean {
    return this.view.synced;
  }

  /** For /readyz: true, or why not. */
  ready = (): true | string => {
    const why = this.view.notCurrent();
    if (why !== undefined) return why;
    if (this.agent.lastReport && !this.agent.lastReport.backendOk) return 'storage backend unavailable';
    return true;
  };

  /** Pending API writes drained (tests). */
  flushWrites(): Promise<void> {
    return this.status.drain();
  }

  /** Rebuilds the desired state soon (the migration seam changed what it is made of). */
  resync(): void {
    this.desiredKey = undefined;
    this.view.changed();
  }

  /**
   * The one place the node's desired state is built from the view, with the migration seam's
   * intent. Slots come from the launcher pods on this node: a migration target's from its target pod.
   */
  private desiredFrom(v: NodeViewInput): ClusterDesired {
    const { migrationIntent } = this.wiring;
    const built = clusterDesired({
      vmis: v.vmis,
      migrationTargets: v.migrationTargets,
      ...(migrationIntent ? { migration: migrationIntent(v.vmis) } : {}),
      pods: v.pods,
      podSlots: v.podSlots,
      cachedImages: v.cachedImages,
      lastSlots: this.slots,
      slotHolder: this.agent.slotHolder,
    });
    // Prefetch: the images this node warms (agent/warm.ts) are part of what it needs.
    const warm = imagesToWarm(this.wiring.node, v.cachedImages);
    if (warm.length) built.desired.warm = warm;
    return built;
  }

  private refresh(): void {
    if (this.stopped) return;
    if (!this.view.synced) {
      if (!this.waitingLogged) this.log.info({ event: 'waiting-for-sync', why: this.ready() }, 'not acting before the view of the cluster is complete');
      this.waitingLogged = true;
      return;
    }
    const input = this.view.input();
    const { desired, slots } = this.desiredFrom(input);
    if (this.peers) {
      // Other nodes' goldens choose this node's image sources; the ones they hydrate from here stay.
      this.peers.setGoldens(peerGoldensOf(input.nodeImageCaches, { allowUnix: this.wiring.imageExportAddress?.kind === 'unix' }));
      const served = this.peers.servedToPeers();
      if (served.length) desired.servedToPeers = served;
    }
    this.bootProfiles?.setCaches(input.nodeImageCaches);
    this.imageNames = desired.imageNames ?? {};
    this.slots = slots;
    this.status.syncVmis(new Set(desired.vmis.map((v) => v.ref.uid)), input.vmis);
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
    this.wiring.onSnapshot?.({ vmis: input.vmis, migrationTargets: input.migrationTargets, slots, nodeImageCaches: input.nodeImageCaches });
  }
}
