import { readFile, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import * as k8s from '@kubernetes/client-node';
import type { KubernetesObject } from '@kubernetes/client-node';
import { z } from 'zod';
import { VmiRefSchema, type VmiRef, type VmiStatus } from '../api/status.js';
import { VOLUMES_FIELD, parseVmi, spdkVolumesOf, vcpuCount, vmiUid } from '../api/vmi.js';
import { VOLUMES_ANNOTATION, parseVolumesAnnotation } from '../api/volumes.js';
import { readUserYaml } from '../api/yaml.js';
import { writeFileAtomic } from '../fsutil.js';
import { diskId } from '../agent/naming.js';
import { RemoteDiskRefSchema, type ListenAddress, type RemoteDiskRef } from '../backend/remote.js';
import type { StorageBackend } from '../backend/types.js';
import type { Logger } from '../log.js';
import { recordMigration, type Metrics, type MigrationOutcome } from '../metrics/metrics.js';
import { freshJournal, migrationKey, outcomeOf, planMigration, type MigratingDisk, type MigrationPlan } from '../migration/coordinator.js';
import { executeMigrationPlan } from '../migration/executor.js';
import { MigrationJournalSchema, MigrationStateSchema, type MigrationJournal, type MigrationState } from '../migration/schemas.js';
import { KUBEVIRT_GROUP, KUBEVIRT_VERSION, VMI_PLURAL, isNotFound, type KubeApi } from './api.js';
import { ClusterAgent, type ClusterAgentOptions, type ClusterSnapshot } from './cluster.js';
import { errorText } from './informer.js';
import { eventBody } from './mapping.js';

/**
 * Live migration in cluster mode: the Kubernetes side of the pure coordinator
 * (migration/coordinator.ts). The source agent exports node-local disks and publishes the
 * exports on the VMI (annotation `kubevirt-spdk.io/migration-exports`, merge patch); the target
 * agent reads them from its informer, attaches them and creates the controllers at the target
 * pod's slot. Decisions are pure functions of (VMI, record) below; `MigrationAgent` only reads
 * the cluster, runs plans and writes back.
 */

export const EXPORTS_ANNOTATION = 'kubevirt-spdk.io/migration-exports';
export const VMIM_PLURAL = 'virtualmachineinstancemigrations';
export const REASON_REFUSED = 'SpdkMigrationRefused';
export const REASON_ABORTED = 'SpdkMigrationAborted';

/** One published export; `migration` ties it to one migration, so a stale list is never attached. */
export const PublishedExportSchema = z.object({ disk: z.string().min(1), migration: z.string().min(1), ref: RemoteDiskRefSchema }).strict();
export const PublishedExportsSchema = z.array(PublishedExportSchema);
export type PublishedExport = z.output<typeof PublishedExportSchema>;

/** What this node keeps per VMI between ticks and across agent restarts (`<stateDir>/migrations/<uid>.json`). */
export const MigrationRecordSchema = z
  .object({
    vmi: VmiRefSchema,
    sourceNode: z.string().optional(),
    /** Source: the VMI's slot here, remembered because the source pod goes away after success. */
    slot: z.string().optional(),
    journal: MigrationJournalSchema,
    /** Reported already (metrics, Events): once per migration and node. */
    reported: z.enum(['succeeded', 'failed', 'aborted', 'refused']).optional(),
    /** Source: the backend restarted mid-migration; the migration object must be deleted. */
    abort: z.enum(['pending', 'done']).optional(),
  })
  .strict();
export type MigrationRecord = z.output<typeof MigrationRecordSchema>;

// ---- pure: a VMI object -> the coordinator's facts --------------------------------------------

export interface VmiMigrationFacts {
  ref: VmiRef;
  state: MigrationState | undefined;
  disks: MigratingDisk[];
  /** The exports the source published for the VMI's current migration, by disk name. */
  sourceExports: Record<string, RemoteDiskRef> | undefined;
  /** Raw annotation value, to decide whether a patch is needed. */
  publishedRaw: string | undefined;
}

/** Facts of one VMI, or why they cannot be read (never throws). */
export function factsOf(raw: unknown): VmiMigrationFacts | { problem: string } {
  let vmi;
  try {
    vmi = parseVmi(raw);
  } catch (e) {
    return { problem: errorText(e) };
  }
  const ref: VmiRef = { namespace: vmi.metadata.namespace, name: vmi.metadata.name, uid: vmiUid(vmi) };
  const rawState = vmi.status?.migrationState;
  let state: MigrationState | undefined;
  if (rawState !== undefined && rawState !== null) {
    const res = MigrationStateSchema.safeParse(rawState);
    if (!res.success) return { problem: `status.migrationState: ${res.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}` };
    state = res.data;
  }
  let disks: MigratingDisk[];
  try {
    const vcpus = vcpuCount(vmi);
    disks = spdkVolumesOf(vmi).map((v) => {
      const d = v.spdkVhostBlkDisk;
      return {
        name: v.name,
        diskId: diskId(ref.uid, v.name),
        source: d.bdev !== undefined ? { kind: 'bdev' as const, bdev: d.bdev } : { kind: 'local' as const },
        readonly: d.readonly,
        queues: Math.min(d.queues ?? vcpus, 256),
      };
    });
  } catch (e) {
    return { problem: errorText(e) };
  }
  const publishedRaw = vmi.metadata.annotations[EXPORTS_ANNOTATION];
  return { ref, state, disks, sourceExports: state ? exportsFor(publishedRaw, migrationKey(state)) : undefined, publishedRaw };
}

/** The published exports of one migration by disk name; undefined when absent or unreadable. */
export function exportsFor(annotation: string | undefined, migration: string): Record<string, RemoteDiskRef> | undefined {
  if (annotation === undefined) return undefined;
  let parsed;
  try {
    parsed = PublishedExportsSchema.safeParse(JSON.parse(annotation));
  } catch {
    return undefined;
  }
  if (!parsed.success) return undefined;
  const mine = parsed.data.filter((e) => e.migration === migration);
  return mine.length ? Object.fromEntries(mine.map((e) => [e.disk, e.ref])) : undefined;
}

/** The annotation value the source's journal calls for (null: remove it). */
export function publishedValue(j: MigrationJournal): string | null {
  const list: PublishedExport[] = Object.entries(j.exports)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([disk, ref]) => ({ disk, migration: j.migrationUid, ref }));
  return list.length ? JSON.stringify(list) : null;
}

/** The merge patch that publishes the source's exports, or undefined when the VMI already says so. */
export function exportsPatch(current: string | undefined, j: MigrationJournal): { metadata: { annotations: Record<string, string | null> } } | undefined {
  const want = publishedValue(j);
  if ((want ?? undefined) === current) return undefined;
  if (want === null && current === undefined) return undefined;
  return { metadata: { annotations: { [EXPORTS_ANNOTATION]: want } } };
}

/** What to report once a plan ran: at most one outcome per migration and node. */
export function outcomeToReport(plan: Pick<MigrationPlan, 'role' | 'outcome' | 'refused'>, reported: MigrationRecord['reported']): MigrationOutcome | undefined {
  if (plan.role === 'none' || reported !== undefined) return undefined;
  if (plan.refused) return 'refused';
  return plan.outcome === 'running' ? undefined : plan.outcome;
}

/** A running source migration whose exports a backend restart took away: it must be aborted. */
export function needsAbort(rec: MigrationRecord, state: MigrationState | undefined): boolean {
  return rec.journal.role === 'source' && rec.abort === undefined && state !== undefined && outcomeOf(state) === 'running' && Object.keys(rec.journal.exports).length > 0;
}

/** Nothing of the migration is left on this node: no export, no attached disk, no controller it made (a source's are given up). */
function keepsNothing(j: MigrationJournal): boolean {
  const empty = (r: Record<string, unknown>): boolean => Object.keys(r).length === 0;
  return empty(j.exports) && empty(j.attached) && (j.role === 'source' || empty(j.controllers));
}

/** Source disks the node must keep (never deleted): those it exports. */
export function heldDiskIds(records: Iterable<MigrationRecord>): Set<string> {
  const out = new Set<string>();
  for (const r of records) {
    if (r.journal.role !== 'source') continue;
    // While the VMI runs here its disks are protected anyway; after the hand-over only the export keeps them.
    for (const disk of Object.keys(r.journal.exports)) out.add(diskId(r.vmi.uid, disk));
  }
  return out;
}

/**
 * The VMI objects the node's desired state should be built from. A source VMI whose migration
 * succeeded is left out (its controllers go; its disks are held by the export). A VMI this node
 * is target of is served from the attached remote disks: its volumes are rewritten to `bdev:`
 * the attached bdev (the reconciler then serves it as it is, never clones or deletes it), and
 * only once every local disk is attached, so a fresh clone is never made in its place.
 */
export function adjustVmis(node: string, onNode: readonly KubernetesObject[], targets: readonly KubernetesObject[], records: ReadonlyMap<string, MigrationRecord>): KubernetesObject[] {
  const out: KubernetesObject[] = [];
  const seen = new Set<string>();
  for (const raw of [...onNode, ...targets]) {
    const uid = raw.metadata?.uid;
    if (uid === undefined || seen.has(uid)) continue;
    seen.add(uid);
    const fromTargets = !onNode.includes(raw);
    const state = MigrationStateSchema.safeParse((raw as { status?: { migrationState?: unknown } }).status?.migrationState ?? undefined).data;
    if (!fromTargets && state?.sourceNode === node && state.targetNode !== node && outcomeOf(state) === 'succeeded') continue;
    const rec = records.get(uid);
    if (rec?.journal.role === 'target' && Object.keys(rec.journal.attached).length > 0) {
      const rewritten = servedFromAttached(raw, rec.journal);
      if (rewritten) out.push(rewritten);
      else if (!fromTargets) out.push(raw);
      continue;
    }
    if (!fromTargets) out.push(raw);
  }
  return out;
}

/** The VMI with its local disks rewritten to the attached remote bdevs, or undefined while one is missing. */
export function servedFromAttached(raw: KubernetesObject, j: MigrationJournal): KubernetesObject | undefined {
  const text = raw.metadata?.annotations?.[VOLUMES_ANNOTATION];
  if (text === undefined) return undefined;
  let vols: unknown;
  try {
    // The agent acts only on an annotation that passes the same rules as at admission.
    parseVolumesAnnotation(text, VOLUMES_FIELD);
    vols = readUserYaml(text, VOLUMES_FIELD);
  } catch {
    return undefined;
  }
  if (!Array.isArray(vols)) return undefined;
  const next: unknown[] = [];
  for (const v of vols as Array<{ name?: unknown; spdkVhostBlkDisk?: Record<string, unknown> }>) {
    const d = v.spdkVhostBlkDisk ?? {};
    if (d.bdev !== undefined) {
      next.push(v);
      continue;
    }
    const opened = typeof v.name === 'string' ? j.attached[v.name] : undefined;
    if (!opened) return undefined;
    const { image: _i, blank: _b, capacity: _c, ...rest } = d;
    next.push({ ...v, spdkVhostBlkDisk: { ...rest, bdev: opened.diskRef } });
  }
  return { ...raw, metadata: { ...raw.metadata, annotations: { ...raw.metadata?.annotations, [VOLUMES_ANNOTATION]: JSON.stringify(next) } } };
}

/** The status annotation as the target reports it: a remote disk's data lives on the source. */
export function overlayDataNode(status: VmiStatus, rec: MigrationRecord | undefined): VmiStatus {
  if (!rec || rec.journal.role !== 'target' || rec.sourceNode === undefined) return status;
  const src = rec.sourceNode;
  return { ...status, disks: status.disks.map((d) => (rec.journal.attached[d.name]?.kind === 'remote' ? { ...d, dataNode: src } : d)) };
}

// ---- the I/O ---------------------------------------------------------------------------------------

export interface MigrationAgentOptions {
  node: string;
  backend: StorageBackend;
  api: KubeApi;
  stateDir: string;
  /** Where this node's exports listen; without it the node cannot be a migration source of local disks. */
  exportAddress: ListenAddress | undefined;
  metrics: Metrics;
  logger: Logger;
  /** Asks cluster mode to rebuild the desired state (records changed what it is made of). */
  resync: () => void;
  /** How often VMIs tracked here but off this node's informers (handed over, failed) are fetched. */
  pollMs?: number;
}

type Seen = { raw: unknown } | 'gone';

export class MigrationAgent {
  readonly records = new Map<string, MigrationRecord>();
  private snapshot: ClusterSnapshot | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private wasDisconnected = false;
  private readonly custom: k8s.CustomObjectsApi;
  private readonly log: Logger;
  private held = new Set<string>();

  constructor(private readonly opts: MigrationAgentOptions) {
    this.log = opts.logger.child({ component: 'migration' });
    this.custom = opts.api.kubeConfig.makeApiClient(k8s.CustomObjectsApi);
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
    this.held = heldDiskIds(this.records.values());
    this.opts.backend.on('disconnected', this.onDisconnected);
    this.opts.backend.on('connected', this.onConnected);
    this.timer = setInterval(() => this.kick(), this.opts.pollMs ?? 5_000);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    this.opts.backend.off('disconnected', this.onDisconnected);
    this.opts.backend.off('connected', this.onConnected);
    await this.running;
  }

  heldByMigration = (id: string): boolean => this.held.has(id);

  statusOverlay = (uid: string, status: VmiStatus): VmiStatus => overlayDataNode(status, this.records.get(uid));

  adjust = (onNode: readonly KubernetesObject[], targets: readonly KubernetesObject[]): KubernetesObject[] => adjustVmis(this.opts.node, onNode, targets, this.records);

  onSnapshot = (s: ClusterSnapshot): void => {
    this.snapshot = s;
    this.kick();
  };

  private readonly onDisconnected = (): void => {
    this.wasDisconnected = true;
  };

  /** A reconnect after a disconnect is a new spdk_tgt: its NVMe-oF exports are gone. */
  private readonly onConnected = (): void => {
    if (!this.wasDisconnected) return;
    this.wasDisconnected = false;
    void this.backendRestarted();
  };

  private async backendRestarted(): Promise<void> {
    const byUid = new Map((this.snapshot?.vmis ?? []).map((v) => [v.metadata?.uid, v]));
    for (const rec of this.records.values()) {
      const f = factsOf(byUid.get(rec.vmi.uid));
      const state = 'problem' in f ? undefined : f.state;
      if (!needsAbort(rec, state)) continue;
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

  /** Resolves when no tick is running (tests). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  private async save(rec: MigrationRecord): Promise<void> {
    this.records.set(rec.vmi.uid, rec);
    this.held = heldDiskIds(this.records.values());
    await writeFileAtomic(path.join(this.dir, `${rec.vmi.uid}.json`), `${JSON.stringify(rec, null, 2)}\n`);
  }

  private async forget(uid: string): Promise<void> {
    this.records.delete(uid);
    this.held = heldDiskIds(this.records.values());
    await rm(path.join(this.dir, `${uid}.json`), { force: true });
  }

  private async fetchVmi(ref: VmiRef): Promise<Seen> {
    try {
      const raw = await this.custom.getNamespacedCustomObject({ group: KUBEVIRT_GROUP, version: KUBEVIRT_VERSION, plural: VMI_PLURAL, namespace: ref.namespace, name: ref.name });
      return (raw as KubernetesObject).metadata?.uid === ref.uid ? { raw } : 'gone';
    } catch (e) {
      if (isNotFound(e)) return 'gone';
      throw e;
    }
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
    let changed = false;
    for (const [uid, s] of seen) {
      const before = this.records.get(uid);
      try {
        if (s === 'gone') {
          if (before) await this.release(before);
        } else await this.step(uid, s.raw, snap);
      } catch (e) {
        this.log.warn({ event: 'migration.step-failed', uid, error: errorText(e) }, 'migration step failed; planning again on the next trigger');
      }
      if (this.records.get(uid) !== before) changed = true;
    }
    if (changed) this.opts.resync();
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
    if (!role) return;
    const key = migrationKey(state);
    const log = this.log.child({ vmi: `${facts.ref.namespace}/${facts.ref.name}`, migration: key, role });
    const slotHere = snap.slots.get(uid);
    if (rec && (rec.journal.migrationUid !== key || rec.journal.role !== role)) rec = undefined; // a new migration starts afresh
    if (!rec) {
      // Only a migration still running is worth starting; an old, finished one is history.
      if (outcomeOf(state) !== 'running') return;
      rec = { vmi: facts.ref, journal: freshJournal(key, role), ...(state.sourceNode ? { sourceNode: state.sourceNode } : {}), ...(role === 'source' && slotHere ? { slot: slotHere } : {}) };
      await this.save(rec);
    }
    if (rec.abort === 'pending') rec = await this.abortMigration(rec, state, log);

    const noAddress = role === 'source' && this.opts.exportAddress === undefined;
    const planned = planMigration({
      node: this.opts.node,
      state,
      disks: facts.disks,
      slot: role === 'source' ? (rec.slot ?? slotHere) : slotHere,
      backendCanMigrate: !noAddress && this.opts.backend.exportDisk !== undefined && this.opts.backend.attachRemoteDisk !== undefined,
      exportAddress: this.opts.exportAddress ?? { kind: 'tcp', host: 'unset', port: 4420 },
      sourceExports: facts.sourceExports,
      journal: rec.journal,
    });
    const plan = noAddress && planned.refused ? { ...planned, reason: NO_ADDRESS } : planned;
    let current = rec;
    const saveJournal = async (journal: MigrationJournal): Promise<void> => {
      current = { ...current, journal };
      await this.save(current);
    };
    if (plan.refused && rec.reported === undefined) {
      log.warn({ event: 'migration.refused', reason: plan.reason }, 'migration refused');
      this.event(facts.ref, REASON_REFUSED, `live migration to ${state.targetNode ?? '?'} refused by the SPDK agent on ${this.opts.node}: ${plan.reason ?? ''}`);
    }
    let failure: unknown;
    try {
      await executeMigrationPlan(this.opts.backend, plan, { save: saveJournal, logger: log, onTargetReady: () => this.opts.resync() });
    } catch (e) {
      failure = e;
    }
    if (role === 'source') await this.publish(facts, current.journal, log);
    const report = failure === undefined ? outcomeToReport(plan, current.reported) : plan.refused ? outcomeToReport(plan, current.reported) : undefined;
    if (report) {
      recordMigration(report, this.opts.metrics);
      log.info({ event: `migration.${report}` }, `migration ${report}`);
      current = { ...current, reported: report };
      await this.save(current);
    }
    if (failure !== undefined) throw failure;
    // A finished migration that keeps nothing here is history (a new one starts afresh): forgetting
    // it stops fetching a VMI that is no longer on this node's informers every poll.
    if (plan.outcome !== 'running' && current.reported !== undefined && keepsNothing(current.journal)) await this.forget(uid);
  }

  private async publish(facts: VmiMigrationFacts, j: MigrationJournal, log: Logger): Promise<void> {
    const patch = exportsPatch(facts.publishedRaw, j);
    if (!patch) return;
    await this.opts.api.patchVmi(facts.ref.namespace, facts.ref.name, patch);
    log.info({ event: 'migration.exports-published', disks: Object.keys(j.exports) }, 'exports published on the VMI');
  }

  /** The VMI is gone: give back what the migration kept here (source exports, target attachments). */
  private async release(rec: MigrationRecord): Promise<void> {
    const log = this.log.child({ vmi: `${rec.vmi.namespace}/${rec.vmi.name}`, migration: rec.journal.migrationUid, role: rec.journal.role });
    const b = this.opts.backend;
    const j = rec.journal;
    if (j.role === 'source') {
      for (const disk of Object.keys(j.exports)) await b.unexportDisk?.(diskId(rec.vmi.uid, disk));
    } else {
      for (const c of Object.values(j.controllers)) await b.deleteController(c);
      for (const [disk, a] of Object.entries(j.attached)) if (a.kind === 'remote') await b.detachRemoteDisk?.(diskId(rec.vmi.uid, disk));
    }
    await this.forget(rec.vmi.uid);
    log.info({ event: 'migration.released' }, 'VMI gone; migration leftovers released');
  }

  /** Deletes the VirtualMachineInstanceMigration (what `virtctl migrate-cancel` does). */
  private async abortMigration(rec: MigrationRecord, state: MigrationState, log: Logger): Promise<MigrationRecord> {
    const ns = rec.vmi.namespace;
    const list = (await this.custom.listNamespacedCustomObject({ group: KUBEVIRT_GROUP, version: KUBEVIRT_VERSION, plural: VMIM_PLURAL, namespace: ns })) as {
      items?: Array<{ metadata?: { name?: string; uid?: string }; spec?: { vmiName?: string }; status?: { phase?: string } }>;
    };
    const mine = (list.items ?? []).filter((m) =>
      state.migrationUid !== undefined ? m.metadata?.uid === state.migrationUid : m.spec?.vmiName === rec.vmi.name && m.status?.phase !== 'Succeeded' && m.status?.phase !== 'Failed',
    );
    for (const m of mine) {
      if (!m.metadata?.name) continue;
      try {
        await this.custom.deleteNamespacedCustomObject({ group: KUBEVIRT_GROUP, version: KUBEVIRT_VERSION, plural: VMIM_PLURAL, namespace: ns, name: m.metadata.name });
      } catch (e) {
        if (!isNotFound(e)) throw e;
      }
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

export interface MigratingClusterOptions extends Omit<ClusterAgentOptions, 'onSnapshot' | 'adjustVmis' | 'statusOverlay'> {
  /** Where this node's exports listen (the node's IP); see exportAddressOf. */
  exportAddress: ListenAddress | undefined;
  migrationPollMs?: number;
}

/** A ClusterAgent with live migration wired in: the hooks of cluster.ts bound to one MigrationAgent. */
export function createMigratingClusterAgent(o: MigratingClusterOptions): { cluster: ClusterAgent; migration: MigrationAgent; start(): Promise<void>; stop(): Promise<void> } {
  // The hooks are called only after start(), when the migration agent exists.
  const late: { m?: MigrationAgent } = {};
  const cluster = new ClusterAgent({
    ...o,
    agent: { ...o.agent, heldByMigration: (id) => (late.m?.heldByMigration(id) ?? false) || (o.agent.heldByMigration?.(id) ?? false) },
    onSnapshot: (s) => late.m?.onSnapshot(s),
    adjustVmis: (onNode, targets) => late.m?.adjust(onNode, targets) ?? [...onNode],
    statusOverlay: (uid, status) => late.m?.statusOverlay(uid, status) ?? status,
  });
  const m = new MigrationAgent({
    node: o.node,
    backend: o.agent.backend,
    api: cluster.api,
    stateDir: o.agent.stateDir,
    exportAddress: o.exportAddress,
    metrics: cluster.agent.metrics,
    logger: o.logger,
    resync: () => cluster.resync(),
    ...(o.migrationPollMs !== undefined ? { pollMs: o.migrationPollMs } : {}),
  });
  late.m = m;
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
