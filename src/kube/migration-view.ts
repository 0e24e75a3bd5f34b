import type { KubernetesObject } from '@kubernetes/client-node';
import { z } from 'zod';
import { VmiRefSchema, type VmiRef } from '../api/status.js';
import { parseVmi, spdkVolumesOf, vcpuCount, vmiUid } from '../api/vmi.js';
import type { DesiredExport } from '../agent/desired.js';
import { RemoteDiskRefSchema, type RemoteDiskRef } from '../backend/remote.js';
import { diskId, queuesOf } from '../contract/index.js';
import type { MigrationOutcome } from '../metrics/metrics.js';
import { intentOfRecord, outcomeOf, type MigratingDisk, type MigrationPlan, type NodeMigrationIntent, type VmiMigrationIntent } from '../migration/coordinator.js';
import { MigrationJournalSchema, MigrationStateSchema, type MigrationJournal, type MigrationState } from '../migration/schemas.js';
import { errorText } from './informer.js';

/**
 * The pure half of live migration in cluster mode: a VMI object -> the planner's facts, the
 * exports the source publishes on the VMI, and the records -> the node's migration intent
 * (what the node view takes from migrations). kube/migration.ts does the I/O.
 */

/**
 * A migration target's word that a disk stands alone there, so that the source may delete its
 * copy. It is published in the target node's own NodeImageCache status (`migrationHydrated`),
 * which only node agents write (a VMI annotation would be the VMI owner's to forge, and a
 * forged word makes the source delete a copy the target still reads), and the source reads it
 * only from the node its own record names as the migration's target.
 */
export const MAX_HYDRATED_ENTRIES = 1024;
export const HydratedEntrySchema = z
  .object({
    /** The VMI's uid (a migration key without KubeVirt's uid is not unique across VMIs). */
    vmi: z.string().min(1).max(128),
    migration: z.string().min(1).max(600),
    disk: z.string().min(1).max(63),
  })
  .strict();
export const MigrationHydratedSchema = z.array(HydratedEntrySchema).max(MAX_HYDRATED_ENTRIES);
export type HydratedEntry = z.output<typeof HydratedEntrySchema>;

/**
 * A migration source's exports, published in the source node's own NodeImageCache status
 * (`migrationExports`) for the target to clone: on the VMI, its owner could point the target
 * at any address. The target reads them only from the node its record names as the source;
 * `vmi` and `migration` tie an entry to one migration, so a stale one is never attached.
 */
export const MAX_EXPORT_ENTRIES = 1024;
export const ExportEntrySchema = z
  .object({
    vmi: z.string().min(1).max(128),
    migration: z.string().min(1).max(600),
    disk: z.string().min(1).max(63),
    ref: RemoteDiskRefSchema,
  })
  .strict();
export const MigrationExportsSchema = z.array(ExportEntrySchema).max(MAX_EXPORT_ENTRIES);
export type ExportEntry = z.output<typeof ExportEntrySchema>;

/** What this node keeps per VMI between ticks and across agent restarts (`<stateDir>/migrations/<uid>.json`). */
export const MigrationRecordSchema = z
  .object({
    vmi: VmiRefSchema,
    sourceNode: z.string().optional(),
    /** Source: the VMI's slot here, remembered because the source pod goes away after success. */
    slot: z.string().optional(),
    journal: MigrationJournalSchema,
    /**
     * An earlier migration of the VMI that still keeps something here (its exports, or disks
     * still copying from its source) when KubeVirt moved on to a newer one: finished first.
     */
    previous: MigrationJournalSchema.optional(),
    /** Source: the backend process its exports were made in (health().instance), when it can tell. */
    backendInstance: z.string().optional(),
    /** Reported already (metrics, Events): once per migration and node. */
    reported: z.enum(['succeeded', 'failed', 'aborted', 'refused']).optional(),
    /** Source: the backend restarted mid-migration; the migration object must be deleted. */
    abort: z.enum(['pending', 'done']).optional(),
  })
  .strict();
export type MigrationRecord = z.output<typeof MigrationRecordSchema>;

export interface VmiMigrationFacts {
  ref: VmiRef;
  state: MigrationState | undefined;
  disks: MigratingDisk[];
}

/** The migration state of a raw VMI, when it has a readable one. */
const stateOfRaw = (raw: unknown): MigrationState | undefined =>
  MigrationStateSchema.safeParse((raw as { status?: { migrationState?: unknown } } | null)?.status?.migrationState ?? undefined).data;

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
        queues: queuesOf(d.queues, vcpus),
      };
    });
  } catch (e) {
    return { problem: errorText(e) };
  }
  return { ref, state, disks };
}

/**
 * Source: the disks of one migration that its target says stand alone there, read from the
 * NodeImageCache of `target` (the node the source's own record names) and no other node's.
 * Empty when the target is unknown, has no such object, or its list does not parse.
 */
export function hydratedOn(caches: readonly unknown[], target: string | undefined, vmi: string, migration: string): Set<string> {
  if (target === undefined) return new Set();
  const own = caches.find((c) => (c as { metadata?: { name?: unknown } } | null)?.metadata?.name === target) as { status?: { migrationHydrated?: unknown } | null } | undefined;
  const res = MigrationHydratedSchema.safeParse(own?.status?.migrationHydrated ?? []);
  return new Set(res.success ? res.data.filter((e) => e.vmi === vmi && e.migration === migration).map((e) => e.disk) : []);
}

/** A target journal's word: the disks that stand alone here, as published entries. */
export function hydratedEntriesOf(vmi: string, j: MigrationJournal): HydratedEntry[] {
  return j.role === 'target' ? j.hydrated.map((disk) => ({ vmi, migration: j.migrationUid, disk })) : [];
}

/**
 * The target's list after a round: what it said before and what its journals say now, each
 * kept while this node still holds that disk from that migration (`holds`; the source may not
 * have read it yet, and the target's record is forgotten once its disks stand alone), the
 * oldest dropped beyond the bound.
 */
export function nextHydratedList(before: readonly HydratedEntry[], now: readonly HydratedEntry[], holds: (e: HydratedEntry) => boolean): HydratedEntry[] {
  const out = new Map<string, HydratedEntry>();
  for (const e of [...before, ...now]) if (holds(e)) out.set(JSON.stringify([e.vmi, e.migration, e.disk]), e);
  return [...out.values()].slice(-MAX_HYDRATED_ENTRIES);
}

/**
 * Target: the exports of one migration by disk name, read from the NodeImageCache of `source`
 * (the node the target's own record names) and no other node's; undefined when there are none
 * or the list does not parse.
 */
export function exportsOn(caches: readonly unknown[], source: string | undefined, vmi: string, migration: string): Record<string, RemoteDiskRef> | undefined {
  if (source === undefined) return undefined;
  const own = caches.find((c) => (c as { metadata?: { name?: unknown } } | null)?.metadata?.name === source) as { status?: { migrationExports?: unknown } | null } | undefined;
  const res = MigrationExportsSchema.safeParse(own?.status?.migrationExports ?? []);
  const mine = res.success ? res.data.filter((e) => e.vmi === vmi && e.migration === migration) : [];
  return mine.length ? Object.fromEntries(mine.map((e) => [e.disk, e.ref])) : undefined;
}

/** Source: what a journal exports, as published entries (by disk name). */
export function exportEntriesOf(vmi: string, j: MigrationJournal): ExportEntry[] {
  if (j.role !== 'source') return [];
  return Object.entries(j.exports)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([disk, ref]) => ({ vmi, migration: j.migrationUid, disk, ref }));
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

/**
 * Nothing of the migration is wanted on this node any more: no export, nothing served from
 * another node (a target whose remote disks all stand alone here serves them as its own).
 */
export function keepsNothing(j: MigrationJournal): boolean {
  const empty = (r: Record<string, unknown>): boolean => Object.keys(r).length === 0;
  if (j.role === 'source') return empty(j.exports);
  if (j.phase === 'serving') return Object.entries(j.attached).every(([disk, a]) => a.kind === 'shared' || (a.lazy === true && j.hydrated.includes(disk)));
  return empty(j.attached) && empty(j.controllers);
}

/** A source VMI whose migration to another node succeeded: it is served there now. */
export function handedOverByState(node: string, raw: unknown): boolean {
  const state = stateOfRaw(raw);
  return state !== undefined && state.sourceNode === node && state.targetNode !== node && outcomeOf(state) === 'succeeded';
}

/**
 * The node's migration intent: each record's latest planned intent (or, before the first plan
 * after a restart, the one its record calls for), plus every VMI on this node that KubeVirt says
 * was handed over (its controllers go even when this node kept no record of the migration).
 */
export function nodeIntentOf(
  node: string,
  onNode: readonly KubernetesObject[],
  records: ReadonlyMap<string, MigrationRecord>,
  planned: ReadonlyMap<string, VmiMigrationIntent>,
): NodeMigrationIntent {
  const serve = new Map<string, NonNullable<VmiMigrationIntent['serve']>>();
  const handedOver = new Set<string>();
  const exports: DesiredExport[] = [];
  for (const raw of onNode) if (raw.metadata?.uid && handedOverByState(node, raw)) handedOver.add(raw.metadata.uid);
  for (const [uid, rec] of records) {
    const intent = planned.get(uid) ?? recordIntent(rec, (disk) => diskId(uid, disk));
    if (intent.serve) serve.set(uid, intent.serve);
    if (intent.handedOver) handedOver.add(uid);
    const why = `live migration ${rec.journal.migrationUid} of VMI ${rec.vmi.namespace}/${rec.vmi.name}`;
    for (const e of intent.exports) exports.push({ id: e.diskId, vmi: rec.vmi, disk: e.disk, address: e.address, why });
  }
  return { serve, handedOver, exports };
}

/** The intent a record alone calls for, its earlier migration's included (an agent that restarted before its first plan). */
export function recordIntent(rec: MigrationRecord, diskIdOf: (disk: string) => string): VmiMigrationIntent {
  return mergeIntents(intentOfRecord(rec.journal, diskIdOf), rec.previous && intentOfRecord(rec.previous, diskIdOf));
}

/** A migration's intent with what its earlier migration still holds here (exports kept; its clones served until they stand alone). */
export function mergeIntents(current: VmiMigrationIntent, previous: VmiMigrationIntent | undefined): VmiMigrationIntent {
  if (!previous) return current;
  const ids = new Set(current.exports.map((e) => e.diskId));
  const exports = [...current.exports, ...previous.exports.filter((e) => !ids.has(e.diskId))];
  const serve = current.serve ?? previous.serve;
  return { exports, handedOver: current.handedOver, ...(serve ? { serve } : {}) };
}
