import type { KubernetesObject } from '@kubernetes/client-node';
import type { NodeStatus } from '../agent/node-status.js';
import type { VmiRef, VmiStatus } from '../api/status.js';
import type { Logger } from '../log.js';
import { isNotFound, type KubeApi } from './api.js';
import { eventBody, eventsFor, newEvents, nodeImageCacheStatus, sameCacheStatus, vmiStatusPatch, type CacheExtras, type NodeImageCacheStatus } from './mapping.js';
import type { ExportEntry, HydratedEntry } from './migration-view.js';
import { Outbox } from './outbox.js';

export interface StatusPublisherOptions {
  node: string;
  api: KubeApi;
  logger: Logger;
  /** Backoff of failed writes. */
  retry?: { initialMs: number; maxMs: number };
  /** The NodeImageCache is rewritten at least this often, so its updatedAt shows the agent is alive. */
  cacheHeartbeatMs?: number;
}

/** Where the publisher finds the VMIs it reports on (bound by cluster.ts). */
export interface StatusSources {
  /** The VMI on this node with this uid now, or undefined (deleted, or not here yet). */
  vmiOnNode: (uid: string) => KubernetesObject | undefined;
}

/**
 * The node agent's reports, written back to the cluster through one Outbox (retried, newest
 * wins): the VMI status annotation (merge patch, only when it changed), deduplicated Warning
 * Events on the VMI, and the node's NodeImageCache (when it changed, or as a heartbeat).
 * `onVmiStatus` is the NodeAgent's status hook; the publisher exists before the agent.
 */
export class StatusPublisher {
  private readonly outbox: Outbox;
  private readonly log: Logger;
  private sources: StatusSources = { vmiOnNode: () => undefined };
  private readonly emitted = new Map<string, Set<string>>();
  private readonly lastStatus = new Map<string, { vmi: VmiRef; status: VmiStatus }>();
  private cacheWritten: { status: NodeImageCacheStatus; at: number } | undefined;
  private lastCache: { node: Pick<NodeStatus, 'backend' | 'images'>; extras: CacheExtras } | undefined;
  private migration: { migrationHydrated?: HydratedEntry[]; migrationExports?: ExportEntry[] } = {};

  constructor(private readonly opts: StatusPublisherOptions) {
    this.log = opts.logger;
    this.outbox = new Outbox(this.log, opts.retry);
  }

  bind(sources: StatusSources): void {
    this.sources = sources;
  }

  /** The NodeAgent's `onVmiStatus`: status annotation and the Events the status calls for. */
  onVmiStatus = (vmi: VmiRef, status: VmiStatus, problems: string[]): void => {
    const log = this.log.child({ vmi: `${vmi.namespace}/${vmi.name}`, uid: vmi.uid });
    this.lastStatus.set(vmi.uid, { vmi, status });
    this.putStatus(vmi, status);
    const planned = eventsFor(status, problems);
    const fresh = newEvents(this.emitted.get(vmi.uid) ?? new Set(), planned);
    this.emitted.set(vmi.uid, new Set(planned.map((e) => e.key)));
    for (const e of fresh) {
      const body = eventBody(vmi, e, this.opts.node, new Date());
      log.warn({ event: 'vmi-event', reason: e.reason, message: e.message }, 'reporting a failure on the VMI');
      this.outbox.put(`event:${vmi.uid}:${e.key}`, () => this.opts.api.createEvent(body));
    }
  };

  /**
   * The node's VMIs changed: forget what was reported on VMIs no longer desired here, and write
   * the status of a VMI that arrived after it was reported (a migration target's status is
   * reported before the VMI is on this node).
   */
  syncVmis(desiredUids: ReadonlySet<string>, onNode: readonly KubernetesObject[]): void {
    for (const uid of this.emitted.keys()) if (!desiredUids.has(uid)) this.emitted.delete(uid);
    for (const uid of this.lastStatus.keys()) if (!desiredUids.has(uid)) this.lastStatus.delete(uid);
    for (const v of onNode) {
      const last = v.metadata?.uid !== undefined ? this.lastStatus.get(v.metadata.uid) : undefined;
      if (last && vmiStatusPatch(v.metadata?.annotations, last.status)) this.putStatus(last.vmi, last.status);
    }
  }

  private putStatus(vmi: VmiRef, status: VmiStatus): void {
    const log = this.log.child({ vmi: `${vmi.namespace}/${vmi.name}`, uid: vmi.uid });
    this.outbox.put(`status:${vmi.uid}`, async () => {
      const cur = this.sources.vmiOnNode(vmi.uid);
      if (!cur) return; // Deleted meanwhile: nothing to report on.
      const patch = vmiStatusPatch(cur.metadata?.annotations, status);
      if (!patch) return;
      await this.opts.api.patchVmi(vmi.namespace, vmi.name, patch);
      log.debug({ event: 'status-patched', disks: status.disks.map((d) => `${d.name}=${d.phase}`) }, 'VMI status annotation updated');
    });
  }

  /** Rewrites the NodeImageCache when the node's cache changed (or as a heartbeat). */
  publishCache(node: Pick<NodeStatus, 'backend' | 'images'> | undefined, extras: CacheExtras = {}): void {
    if (!node) return;
    this.lastCache = { node, extras };
    const status: NodeImageCacheStatus = {
      ...nodeImageCacheStatus(node, new Date().toISOString(), extras),
      // Written when known (an empty list too): a merge patch leaves out what it omits.
      ...this.migration,
    };
    const heartbeat = this.opts.cacheHeartbeatMs ?? 10 * 60_000;
    const prev = this.cacheWritten;
    if (prev && sameCacheStatus(prev.status, status) && Date.now() - prev.at < heartbeat) return;
    this.cacheWritten = { status, at: Date.now() };
    this.outbox.put('nodeimagecache', async () => {
      await this.opts.api.ensureNodeImageCache(this.opts.node);
      try {
        await this.opts.api.patchNodeImageCacheStatus(this.opts.node, status);
      } catch (e) {
        // Deleted between the two calls: the next round creates it again.
        if (isNotFound(e)) this.cacheWritten = undefined;
        throw e;
      }
    });
  }

  /**
   * Live migration's part of the node's NodeImageCache status: as a target, the disks that stand
   * alone here; as a source, the exports the targets clone. Written now when the cache was
   * published before, else with the first.
   */
  setMigrationStatus(part: { migrationHydrated?: readonly HydratedEntry[]; migrationExports?: readonly ExportEntry[] }): void {
    if (part.migrationHydrated) this.migration.migrationHydrated = [...part.migrationHydrated];
    if (part.migrationExports) this.migration.migrationExports = [...part.migrationExports];
    if (this.lastCache) this.publishCache(this.lastCache.node, this.lastCache.extras);
  }

  /** The API server is back: retry pending writes now. */
  retryNow(): void {
    this.outbox.retryNow();
  }

  /** Pending writes drained (tests). */
  drain(): Promise<void> {
    return this.outbox.drain();
  }

  async close(): Promise<void> {
    await this.outbox.close();
  }
}
