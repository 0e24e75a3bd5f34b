import { readFile, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { KubernetesObject } from '@kubernetes/client-node';
import type { VmiRef } from '../api/status.js';
import type { NodeAgent } from '../agent/agent.js';
import { writeFileAtomic } from '../fsutil.js';
import type { ListenAddress, RemoteDiskRef } from '../backend/remote.js';
import type { StorageBackend } from '../backend/types.js';
import type { Logger } from '../log.js';
import { recordMigration, type Metrics } from '../metrics/metrics.js';
import {
  applySteps,
  freshJournal,
  migrationKey,
  outcomeOf,
  planFinished,
  planMigration,
  stillHeldBy,
  type CoordinatorInput,
  type DiskHere,
  type NodeMigrationIntent,
  type VmiMigrationIntent,
} from '../migration/coordinator.js';
import type { MigrationState } from '../migration/schemas.js';
import type { KubeApi } from './api.js';
import { ClusterAgent, clusterParts, type ClusterAgentOptions, type ClusterSnapshot } from './cluster.js';
import { errorText } from './informer.js';
import { eventBody } from './mapping.js';
import { MigrationNodeStatus } from './migration-node-status.js';
import {
  MigrationRecordSchema,
  factsOf,
  hydratedEntriesOf,
  keepsNothing,
  mergeIntents,
  needsAbort,
  nodeIntentOf,
  outcomeToReport,
  type ExportEntry,
  type HydratedEntry,
  type MigrationRecord,
  type VmiMigrationFacts,
} from './migration-view.js';

export {
  ExportEntrySchema,
  HydratedEntrySchema,
  MAX_EXPORT_ENTRIES,
  MAX_HYDRATED_ENTRIES,
  MigrationExportsSchema,
  MigrationHydratedSchema,
  MigrationRecordSchema,
  exportEntriesOf,
  exportsOn,
  factsOf,
  handedOverByState,
  hydratedEntriesOf,
  hydratedOn,
  keepsNothing,
  mergeIntents,
  recordIntent,
  needsAbort,
  nextHydratedList,
  nodeIntentOf,
  outcomeToReport,
  type ExportEntry,
  type HydratedEntry,
  type MigrationRecord,
  type VmiMigrationFacts,
} from './migration-view.js';

/**
 * Live migration in cluster mode: the Kubernetes side of the pure planner
 * (migration/coordinator.ts). It calls no backend: each tick plans every migration this node
 * takes part in, keeps the records (`<stateDir>/migrations`), and hands the node's migration
 * intent to the node view (the agent's one reconciler exports, attaches and tears down). The
 * source publishes its exports in its own NodeImageCache status; after switchover the target
 * publishes the disks that stand alone there, and the source lets go of them once its target
 * says so (migration-node-status.ts: what the two nodes say and hear). A real backend restart
 * mid-migration on the source (a new process: health().instance changed) cancels the migration
 * (the exports the target reads are gone); a transient reconnect to the same process does not.
 */

export { VMIM_PLURAL } from './api.js';
export const REASON_REFUSED = 'SpdkMigrationRefused';
export const REASON_ABORTED = 'SpdkMigrationAborted';

export interface MigrationAgentOptions {
  node: string;
  backend: StorageBackend;
  /** The node's agent: what it exports and serves now (the planner's view of "done"). */
  agent: Pick<NodeAgent, 'exportsNow' | 'lastReport'> & Partial<Pick<NodeAgent, 'ownedNow'>>;
  api: KubeApi;
  stateDir: string;
  /** Where this node's exports listen; without it the node cannot be a migration source of local disks. */
  exportAddress: ListenAddress | undefined;
  metrics: Metrics;
  logger: Logger;
  /** Asks cluster mode to rebuild the desired state (the migration intent changed). */
  resync: () => void;
  /** How often VMIs tracked here but off this node's informers (handed over, failed) are fetched. */
  pollMs?: number;
  /** Target: publishes the disks that stand alone here (the node's NodeImageCache `migrationHydrated`). */
  publishHydrated?: (entries: readonly HydratedEntry[]) => void;
  /** Source: publishes the exports the targets clone (the node's NodeImageCache `migrationExports`). */
  publishExports?: (entries: readonly ExportEntry[]) => void;
}

type Seen = { raw: unknown } | 'gone';

export class MigrationAgent {
  readonly records = new Map<string, MigrationRecord>();
  /** The latest planned intent per VMI uid (records alone stand in before the first plan). */
  private readonly planned = new Map<string, VmiMigrationIntent>();
  private snapshot: ClusterSnapshot | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private wasDisconnected = false;
  /** The backend process seen last (health().instance), when the driver can tell. */
  private instance: string | undefined;
  /** What this node says and hears in NodeImageCache status (hydrated disks, exports). */
  private readonly words: MigrationNodeStatus;
  /** A backend reconnect being checked (its tick follows). */
  private reconnecting: Promise<void> | undefined;
  private readonly log: Logger;

  constructor(private readonly opts: MigrationAgentOptions) {
    this.log = opts.logger.child({ component: 'migration' });
    this.words = new MigrationNodeStatus({
      stateDir: opts.stateDir,
      agent: opts.agent,
      logger: this.log,
      ...(opts.publishHydrated ? { publishHydrated: opts.publishHydrated } : {}),
      ...(opts.publishExports ? { publishExports: opts.publishExports } : {}),
    });
  }

  private get dir(): string {
    return path.join(this.opts.stateDir, 'migrations');
  }

  /** Loads the records a previous run left (agent restart mid-migration). */
  async init(): Promise<void> {
    for (const f of await readdir(this.dir).catch(() => [] as string[])) {
      if (!f.endsWith('.json')) continue;
      try {
        const rec = MigrationRecordSchema.parse(JSON.parse(await readFile(path.join(this.dir, f), 'utf8')));
        this.records.set(rec.vmi.uid, rec);
      } catch (e) {
        this.log.warn({ event: 'migration.record-unreadable', file: f, error: errorText(e) }, 'ignoring an unreadable migration record');
      }
    }
    await this.words.load();
    this.opts.backend.on('disconnected', this.onDisconnected);
    this.opts.backend.on('connected', this.onConnected);
    this.instance = (await this.opts.backend.health()).instance;
    this.timer = setInterval(() => this.kick(), this.opts.pollMs ?? 5_000);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    this.opts.backend.off('disconnected', this.onDisconnected);
    this.opts.backend.off('connected', this.onConnected);
    await this.running;
  }

  /** The node's migration intent, for the node view (cluster.ts's seam). */
  nodeIntent = (onNode: readonly KubernetesObject[]): NodeMigrationIntent => nodeIntentOf(this.opts.node, onNode, this.records, this.planned);

  onSnapshot = (s: ClusterSnapshot): void => {
    this.snapshot = s;
    this.kick();
  };

  private readonly onDisconnected = (): void => {
    this.wasDisconnected = true;
  };

  /**
   * A reconnect after a disconnect: a new backend process lost the exports the target reads,
   * the same process (a transient drop of the RPC connection) did not. A driver that cannot
   * tell (no health().instance) is taken at its worst: a restart.
   */
  private readonly onConnected = (): void => {
    if (!this.wasDisconnected) return;
    this.wasDisconnected = false;
    const handled: Promise<void> = this.backendReconnected()
      .catch((e: unknown) => this.log.error({ event: 'migration.reconnect-failed', error: errorText(e) }, 'cannot check the backend after a reconnect'))
      .finally(() => {
        if (this.reconnecting === handled) this.reconnecting = undefined;
      });
    this.reconnecting = handled;
  };

  private async backendReconnected(): Promise<void> {
    const before = this.instance;
    const now = (await this.opts.backend.health()).instance;
    this.instance = now;
    const byUid = new Map((this.snapshot?.vmis ?? []).map((v) => [v.metadata?.uid, v]));
    for (const rec of this.records.values()) {
      const f = factsOf(byUid.get(rec.vmi.uid));
      const state = 'problem' in f ? undefined : f.state;
      if (!needsAbort(rec, state)) continue;
      const made = rec.backendInstance ?? before;
      if (now !== undefined && made !== undefined && made === now) {
        this.log.info({ event: 'migration.backend-reconnected', vmi: `${rec.vmi.namespace}/${rec.vmi.name}`, instance: now }, 'backend connection came back to the same process; the migration goes on');
        continue;
      }
      this.log.warn({ event: 'migration.abort-needed', vmi: `${rec.vmi.namespace}/${rec.vmi.name}`, migration: rec.journal.migrationUid }, 'backend restarted mid-migration; aborting the migration');
      await this.save({ ...rec, abort: 'pending' });
    }
    this.kick();
  }

  /** One tick at a time; triggers during a tick run one more. */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.tick();
        } catch (e) {
          this.log.error({ event: 'migration.tick-failed', error: errorText(e) }, 'migration tick failed');
        }
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = undefined;
    });
  }

  /** Resolves when no tick is running and no backend reconnect is being checked (tests). */
  async idle(): Promise<void> {
    while (this.running || this.reconnecting) await (this.reconnecting ?? this.running);
  }

  private async save(rec: MigrationRecord): Promise<void> {
    this.records.set(rec.vmi.uid, rec);
    await writeFileAtomic(path.join(this.dir, `${rec.vmi.uid}.json`), `${JSON.stringify(rec, null, 2)}\n`);
  }

  private async forget(uid: string): Promise<void> {
    this.records.delete(uid);
    this.planned.delete(uid);
    await rm(path.join(this.dir, `${uid}.json`), { force: true });
  }

  private async fetchVmi(ref: VmiRef): Promise<Seen> {
    const raw = await this.opts.api.getVmi(ref.namespace, ref.name);
    return raw?.metadata?.uid === ref.uid ? { raw } : 'gone';
  }

  private async tick(): Promise<void> {
    const snap = this.snapshot;
    if (!snap) return;
    const seen = new Map<string, Seen>();
    for (const v of [...snap.vmis, ...snap.migrationTargets]) if (v.metadata?.uid && !seen.has(v.metadata.uid)) seen.set(v.metadata.uid, { raw: v });
    for (const rec of this.records.values()) {
      if (seen.has(rec.vmi.uid)) continue;
      try {
        seen.set(rec.vmi.uid, await this.fetchVmi(rec.vmi));
      } catch (e) {
        this.log.warn({ event: 'migration.fetch-failed', vmi: `${rec.vmi.namespace}/${rec.vmi.name}`, error: errorText(e) }, 'cannot read a VMI; trying again later');
      }
    }
    const before = JSON.stringify(this.nodeIntent(snap.vmis), (_k, v: unknown) => (v instanceof Map ? [...v] : v instanceof Set ? [...v] : v));
    for (const [uid, s] of seen) {
      try {
        if (s === 'gone') {
          const rec = this.records.get(uid);
          // The VMI is gone: nothing of its migration is wanted here (the reconciler gives back exports and attachments).
          if (rec) {
            await this.forget(uid);
            this.log.info({ event: 'migration.released', vmi: `${rec.vmi.namespace}/${rec.vmi.name}`, migration: rec.journal.migrationUid }, 'VMI gone; migration leftovers released');
          }
        } else await this.step(uid, s.raw, snap);
      } catch (e) {
        this.log.warn({ event: 'migration.step-failed', uid, error: errorText(e) }, 'migration step failed; planning again on the next trigger');
      }
    }
    await this.words.sayHydrated([]);
    this.words.sayExports(this.records.values());
    const after = JSON.stringify(this.nodeIntent(snap.vmis), (_k, v: unknown) => (v instanceof Map ? [...v] : v instanceof Set ? [...v] : v));
    if (after !== before) this.opts.resync();
  }

  /** What the agent holds for one VMI now: its exports and its disks' status, by disk name. */
  private here(facts: VmiMigrationFacts, migration: string): CoordinatorInput['here'] {
    const names = new Map(facts.disks.map((d) => [d.diskId, d.name]));
    const exported: Record<string, RemoteDiskRef> = {};
    for (const [id, e] of Object.entries(this.opts.agent.exportsNow())) {
      const name = names.get(id);
      if (name !== undefined && e.vmi.uid === facts.ref.uid) exported[name] = e.ref;
    }
    const report = this.opts.agent.lastReport?.vmis.find((v) => v.vmi.uid === facts.ref.uid);
    const disks: Record<string, DiskHere> = Object.fromEntries(
      (report?.disks ?? []).map((d) => [d.name, { phase: d.phase, ...(d.message ? { message: d.message } : {}), ...(d.migration ? { migration: d.migration } : {}) }]),
    );
    // Disks this node holds under the VMI's disk ids that are not a clone being made here (an earlier copy).
    const owned = this.opts.agent.ownedNow?.() ?? {};
    const earlierCopies = facts.disks.filter((d) => owned[d.diskId] !== undefined && owned[d.diskId]?.migration !== migration).map((d) => d.name);
    return { exported, disks, earlierCopies };
  }

  private async step(uid: string, raw: unknown, snap: ClusterSnapshot): Promise<void> {
    const facts = factsOf(raw);
    let rec = this.records.get(uid);
    if ('problem' in facts) {
      if (rec) this.log.warn({ event: 'migration.vmi-unreadable', uid, problem: facts.problem }, 'cannot read the VMI of a migration');
      return;
    }
    const state = facts.state;
    if (!state) return;
    const role = state.targetNode === this.opts.node ? 'target' : state.sourceNode === this.opts.node ? 'source' : undefined;
    const key = migrationKey(state);
    // KubeVirt moved on to a migration this node takes no (running) part in: a record that still
    // holds something here (B -> C right after A -> B) is finished on its own.
    if (rec && (rec.journal.migrationUid !== key || rec.journal.role !== role) && (!role || outcomeOf(state) !== 'running')) {
      await this.finishAlone(uid, rec, facts, snap);
      return;
    }
    if (!role) return;
    const log = this.log.child({ vmi: `${facts.ref.namespace}/${facts.ref.name}`, migration: key, role });
    const slotHere = snap.slots.get(uid);
    // A new migration starts afresh; an earlier one that still keeps something here is finished beside it (A -> B -> A).
    let earlier: MigrationRecord['previous'];
    if (rec && (rec.journal.migrationUid !== key || rec.journal.role !== role)) {
      const held = [rec.journal, rec.previous].find((j) => j !== undefined && (j.phase === 'handedOver' || j.phase === 'serving') && !keepsNothing(j));
      earlier = held;
      rec = undefined;
    }
    const peerNow = role === 'source' ? state.targetNode : state.sourceNode;
    if (rec && rec.journal.peer === undefined && peerNow !== undefined) {
      // The other node, once known, is fixed for the migration: only the target's word lets a
      // source go, only the source's exports are cloned by a target.
      rec = { ...rec, journal: { ...rec.journal, peer: peerNow } };
      await this.save(rec);
    }
    if (!rec) {
      // Only a migration still running is worth starting; an old, finished one is history.
      if (outcomeOf(state) !== 'running') return;
      this.planned.delete(uid);
      const peer = role === 'source' ? state.targetNode : state.sourceNode;
      rec = {
        vmi: facts.ref,
        journal: freshJournal(key, role, peer),
        ...(state.sourceNode ? { sourceNode: state.sourceNode } : {}),
        ...(role === 'source' && slotHere ? { slot: slotHere } : {}),
        ...(earlier ? { previous: earlier } : {}),
        ...(role === 'source' && this.instance !== undefined ? { backendInstance: this.instance } : {}),
      };
      await this.save(rec);
      if (earlier) log.info({ event: 'migration.previous-kept', previous: earlier.migrationUid, why: stillHeldBy(earlier) }, 'an earlier migration of the VMI still holds this node; finishing it first');
    }
    // Missed events (an agent that restarted with its backend): the exports were made in another process.
    if (role === 'source' && rec.abort === undefined && rec.backendInstance !== undefined && this.instance !== undefined && rec.backendInstance !== this.instance && needsAbort(rec, state)) {
      log.warn({ event: 'migration.abort-needed', made: rec.backendInstance, now: this.instance }, 'backend is a new process since the exports were made; aborting the migration');
      rec = { ...rec, abort: 'pending' };
      await this.save(rec);
    }
    if (rec.abort === 'pending') rec = await this.abortMigration(rec, state, log);

    const noAddress = role === 'source' && this.opts.exportAddress === undefined;
    const b = this.opts.backend;
    const common: Omit<CoordinatorInput, 'state' | 'journal'> = {
      node: this.opts.node,
      disks: facts.disks,
      slot: role === 'source' ? (rec.slot ?? slotHere) : slotHere,
      backendCanMigrate: !noAddress && b.exportDisk !== undefined && b.attachRemoteDisk !== undefined,
      backendCanClone: b.cloneRemoteDisk !== undefined && b.hydrateDisk !== undefined,
      exportAddress: this.opts.exportAddress ?? { kind: 'tcp', host: 'unset', port: 4420 },
      sourceExports: role === 'target' ? this.words.sourceExports(snap.nodeImageCaches, rec.journal.peer, uid, key) : undefined,
      here: this.here(facts, key),
    };
    // The earlier migration first: what it still holds here, and whether it is done.
    let previousIntent: VmiMigrationIntent | undefined;
    let previous = rec.previous;
    if (previous) {
      const p = planFinished({ ...common, targetHydrated: this.words.targetSays(snap.nodeImageCaches, uid, previous) }, previous);
      previous = applySteps(previous, p.actions);
      for (const a of p.actions) log.info({ event: `migration.previous.${a.type}`, previous: previous.migrationUid, ...('disk' in a ? { disk: a.disk } : {}) }, a.type);
      previousIntent = p.intent;
      await this.words.sayHydrated(hydratedEntriesOf(uid, previous));
      const { previous: _done, ...rest } = rec;
      rec = keepsNothing(previous) ? rest : { ...rec, previous };
      if (keepsNothing(previous)) log.info({ event: 'migration.previous-done', previous: previous.migrationUid }, 'the earlier migration keeps nothing here any more');
      if (JSON.stringify(rec.previous) !== JSON.stringify(this.records.get(uid)?.previous)) await this.save(rec);
    }
    const blockedBy = rec.previous ? stillHeldBy(rec.previous) : undefined;
    const planned = planMigration({
      ...common,
      state,
      targetHydrated: this.words.targetSays(snap.nodeImageCaches, uid, rec.journal),
      ...(blockedBy !== undefined ? { blockedBy } : {}),
      journal: rec.journal,
    });
    const plan = noAddress && planned.refused ? { ...planned, reason: NO_ADDRESS } : planned;
    if (plan.refused && rec.reported === undefined) {
      log.warn({ event: 'migration.refused', reason: plan.reason }, 'migration refused');
      this.event(facts.ref, REASON_REFUSED, `live migration to ${state.targetNode ?? '?'} refused by the SPDK agent on ${this.opts.node}: ${plan.reason ?? ''}`);
    }
    this.planned.set(uid, mergeIntents(plan.intent, previousIntent));
    let current: MigrationRecord = rec;
    if (plan.journal && plan.actions.length > 0) {
      current = { ...current, journal: applySteps(plan.journal, plan.actions) };
      await this.save(current);
      for (const a of plan.actions) log.info({ event: `migration.${a.type}`, ...('disk' in a ? { disk: a.disk } : {}) }, a.type);
    } else if (plan.journal && plan.journal !== rec.journal) {
      current = { ...current, journal: plan.journal };
      await this.save(current);
    }
    if (role === 'target') await this.words.sayHydrated(hydratedEntriesOf(uid, current.journal));
    const report = outcomeToReport(plan, current.reported);
    if (report) {
      recordMigration(report, this.opts.metrics);
      log.info({ event: `migration.${report}` }, `migration ${report}`);
      current = { ...current, reported: report };
      await this.save(current);
    }
    // A finished migration that keeps nothing here is history (a new one starts afresh): forgetting
    // it stops fetching a VMI that is no longer on this node's informers every poll.
    if (plan.outcome !== 'running' && current.reported !== undefined && keepsNothing(current.journal)) await this.forget(uid);
  }

  /**
   * Plans a record of an earlier migration, succeeded, on its own: lets go of what the other node
   * no longer needs, publishes what this node hydrated, forgets the record once it keeps nothing.
   */
  private async finishAlone(uid: string, rec: MigrationRecord, facts: VmiMigrationFacts, snap: ClusterSnapshot): Promise<void> {
    const j = rec.journal;
    if ((j.phase !== 'handedOver' && j.phase !== 'serving') || keepsNothing(j)) return;
    const log = this.log.child({ vmi: `${facts.ref.namespace}/${facts.ref.name}`, migration: j.migrationUid, role: j.role });
    const p = planFinished(
      {
        node: this.opts.node,
        disks: facts.disks,
        slot: rec.slot ?? snap.slots.get(uid),
        backendCanMigrate: true,
        backendCanClone: this.opts.backend.cloneRemoteDisk !== undefined && this.opts.backend.hydrateDisk !== undefined,
        exportAddress: this.opts.exportAddress ?? { kind: 'tcp', host: 'unset', port: 4420 },
        sourceExports: undefined,
        here: this.here(facts, j.migrationUid),
        targetHydrated: this.words.targetSays(snap.nodeImageCaches, uid, j),
      },
      j,
    );
    this.planned.set(uid, p.intent);
    const next = applySteps(j, p.actions);
    for (const a of p.actions) log.info({ event: `migration.${a.type}`, ...('disk' in a ? { disk: a.disk } : {}) }, a.type);
    if (p.actions.length > 0) await this.save({ ...rec, journal: next });
    await this.words.sayHydrated(hydratedEntriesOf(uid, next));
    if (keepsNothing(next)) await this.forget(uid);
  }

  /** Deletes the VirtualMachineInstanceMigration (what `virtctl migrate-cancel` does). */
  private async abortMigration(rec: MigrationRecord, state: MigrationState, log: Logger): Promise<MigrationRecord> {
    const ns = rec.vmi.namespace;
    const mine = (await this.opts.api.listVmiMigrations(ns)).filter((m) =>
      state.migrationUid !== undefined ? m.metadata?.uid === state.migrationUid : m.spec?.vmiName === rec.vmi.name && m.status?.phase !== 'Succeeded' && m.status?.phase !== 'Failed',
    );
    for (const m of mine) {
      if (!m.metadata?.name) continue;
      await this.opts.api.deleteVmiMigration(ns, m.metadata.name);
      log.warn({ event: 'migration.aborted-by-agent', object: m.metadata.name }, 'deleted the migration object');
    }
    this.event(rec.vmi, REASON_ABORTED, `live migration cancelled by the SPDK agent on ${this.opts.node}: its storage backend restarted and lost the disk exports the target reads`);
    const next: MigrationRecord = { ...rec, abort: 'done' };
    await this.save(next);
    return next;
  }

  private event(vmi: VmiRef, reason: string, message: string): void {
    const body = { ...eventBody(vmi, { key: reason, reason: 'SpdkDiskFailed', message: message.slice(0, 1024) }, this.opts.node, new Date()), reason };
    void this.opts.api.createEvent(body).catch((e: unknown) => this.log.warn({ event: 'migration.event-failed', error: errorText(e) }, 'cannot create an Event'));
  }
}

const NO_ADDRESS = 'this node has no address for disk exports: set --node-address or the NODE_IP environment variable';

// ---- wiring ------------------------------------------------------------------------------------------

export interface MigratingClusterOptions extends Omit<ClusterAgentOptions, 'onSnapshot' | 'migrationIntent'> {
  /** Where this node's exports listen (the node's IP); see exportAddressOf. */
  exportAddress: ListenAddress | undefined;
  migrationPollMs?: number;
}

/** A ClusterAgent with live migration wired in: the hooks of cluster.ts bound to one MigrationAgent. */
export function createMigratingClusterAgent(o: MigratingClusterOptions): { cluster: ClusterAgent; migration: MigrationAgent; start(): Promise<void>; stop(): Promise<void> } {
  const parts = clusterParts(o);
  const m = new MigrationAgent({
    node: o.node,
    backend: o.agent.backend,
    agent: parts.agent,
    api: parts.api,
    stateDir: o.agent.stateDir,
    exportAddress: o.exportAddress,
    metrics: parts.agent.metrics,
    logger: o.logger,
    // Called only after start(), once the cluster below exists.
    resync: () => cluster.resync(),
    publishHydrated: (entries) => parts.status.setMigrationStatus({ migrationHydrated: entries }),
    publishExports: (entries) => parts.status.setMigrationStatus({ migrationExports: entries }),
    ...(o.migrationPollMs !== undefined ? { pollMs: o.migrationPollMs } : {}),
  });
  const cluster = new ClusterAgent({ ...parts, onSnapshot: (s) => m.onSnapshot(s), migrationIntent: (onNode) => m.nodeIntent(onNode) });
  // The planner's "done" is what the agent did: plan again after every round.
  cluster.agent.on('reconciled', () => m.kick());
  return {
    cluster,
    migration: m,
    start: async () => {
      await m.init();
      await cluster.start();
    },
    stop: async () => {
      await m.stop();
      await cluster.stop();
    },
  };
}

/** NVMe-oF/TCP's registered port: exports of every disk share it (one subsystem per disk). */
export const EXPORT_PORT = 4420;

/** The export address from `--node-address` or the downward API's NODE_IP; undefined when neither is set. */
export function exportAddressOf(nodeAddress: string | undefined, env: NodeJS.ProcessEnv, port = EXPORT_PORT): ListenAddress | undefined {
  const host = nodeAddress ?? env.NODE_IP;
  return host ? { kind: 'tcp', host, port } : undefined;
}
