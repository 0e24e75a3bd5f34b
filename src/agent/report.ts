import type { DiskStatus, VmiRef } from '../api/status.js';
import type { ObservedState } from '../backend/types.js';
import type { DesiredDisk, DesiredState } from './desired.js';
import type { DiskOutcome } from './executor.js';
import type { JournalState } from './journal.js';
import type { NodeStatus } from './node-status.js';
import type { Action } from './reconcile.js';

/**
 * What a reconcile round tells: each desired disk's phase (from the last plan and the
 * executor's outcomes) and the node's status file. Pure: the agent writes what these return.
 */

export interface VmiReport {
  vmi: VmiRef;
  origin: string;
  slot?: string;
  problems: string[];
  disks: DiskStatus[];
}

export interface ReconcileReport {
  reason: string;
  passes: number;
  durationMs: number;
  /** The last pass found nothing to do. */
  converged: boolean;
  /** Every disk is Ready or Failed and no VMI waits on anything: `--once` may stop. */
  settled: boolean;
  vmis: VmiReport[];
  controllersCreated: number;
  backendOk: boolean;
  problems: string[];
}

export function reportOf(
  reason: string,
  desired: DesiredState,
  plan: readonly Action[],
  outcomes: ReadonlyMap<string, DiskOutcome>,
  r: { passes: number; converged: boolean; controllersCreated: number; durationMs: number; node: string; backendError?: string },
): ReconcileReport {
  const byKey = new Map<string, Action[]>();
  for (const a of plan) {
    if (!('target' in a) || !a.target) continue;
    byKey.set(a.target.key, [...(byKey.get(a.target.key) ?? []), a]);
  }
  const vmis: VmiReport[] = desired.vmis.map((v) => {
    const disks: DiskStatus[] = v.disks.map((d) => {
      const acts = byKey.get(d.key) ?? [];
      const ready = acts.find((a) => a.kind === 'reportReady');
      const err = acts.find((a) => a.kind === 'reportError');
      const o = outcomes.get(d.key);
      if (r.backendError !== undefined) return { name: d.name, phase: 'Pending', message: `backend unavailable: ${r.backendError}` };
      const mig = migrationStatusOf(d, o);
      // An attached disk's data lives on the node that exports it; a remote clone's until it is hydrated.
      const dataNode = mig && mig.phase !== 'Hydrated' ? mig.from : r.node;
      if (ready?.kind === 'reportReady') {
        const paused = mig?.phase === 'Paused' && o?.hydration?.message ? { message: `copy from node ${mig.from} paused (it resumes by itself): ${o.hydration.message}` } : {};
        const note = d.source.kind === 'attached' ? { message: `served from node ${d.source.node}'s export; the data stays there (this node's storage backend cannot copy a migrated disk)` } : paused;
        return { name: d.name, phase: 'Ready', socket: ready.socket, dataNode, ...(mig ? { migration: mig } : {}), ...note };
      }
      if (err?.kind === 'reportError') return { name: d.name, phase: 'Failed', message: err.message };
      if (o) return { name: d.name, phase: o.phase, ...(o.message ? { message: o.message } : {}) };
      if (acts.some((a) => a.kind === 'ensureImage')) return { name: d.name, phase: 'Importing' };
      return { name: d.name, phase: acts.length ? 'Provisioning' : 'Pending' };
    });
    return { vmi: v.ref, origin: v.origin, ...(v.slot ? { slot: v.slot } : {}), problems: v.problems, disks };
  });
  const settled = r.backendError === undefined && vmis.every((v) => v.problems.length > 0 || v.disks.every((d) => d.phase === 'Ready' || d.phase === 'Failed'));
  return {
    reason,
    passes: r.passes,
    durationMs: r.durationMs,
    converged: r.converged,
    settled,
    vmis,
    controllersCreated: r.controllersCreated,
    backendOk: r.backendError === undefined,
    problems: desired.problems,
  };
}

/** Where a migrated disk's copy stands (undefined for a disk that is this node's alone). */
export function migrationStatusOf(d: DesiredDisk, o: DiskOutcome | undefined): DiskStatus['migration'] {
  if (d.source.kind === 'attached') return { phase: 'Attached', from: d.source.node };
  if (d.source.kind !== 'remote') return undefined;
  const h = o?.hydration;
  if (!d.source.hydrate || !h) return { phase: d.source.hydrate ? 'Hydrating' : 'Cloned', from: d.source.node, ...(d.source.hydrate ? {} : { percent: 0 }) };
  const phase = h.state === 'standalone' ? 'Hydrated' : h.state === 'paused' ? 'Paused' : 'Hydrating';
  return { phase, from: d.source.node, percent: h.state === 'standalone' ? 100 : Math.max(0, Math.min(100, Math.floor(h.percent))) };
}

/** `status.json` (without its timestamp) from the round's report, plan and observation. */
export function nodeStatusOf(
  report: ReconcileReport,
  plan: readonly Action[],
  observed: ObservedState | undefined,
  journal: Readonly<JournalState>,
  node: { backend: NodeStatus['backend']['kind']; resyncMs: number },
): Omit<NodeStatus, 'updatedAt'> {
  const owners = new Map(Object.entries(journal.owned).map(([id, o]) => [id, `${o.vmi.namespace}/${o.vmi.name}`]));
  return {
    version: 1,
    backend: { kind: node.backend, ok: report.backendOk, ...(report.backendOk ? {} : { message: 'backend unavailable' }) },
    resyncMs: node.resyncMs,
    reconcile: { reason: report.reason, passes: report.passes, durationMs: report.durationMs, converged: report.converged },
    images: (observed?.images ?? []).map((i) => {
      const lastUse = journal.imageLastUse[i.name];
      return { name: i.name, phase: i.phase, sizeBytes: i.sizeBytes, cloneCount: i.cloneCount, ...(lastUse ? { lastUse: new Date(lastUse).toISOString() } : {}), ...(i.message ? { message: i.message } : {}), ...(i.bootProfile ? { bootProfile: i.bootProfile } : {}) };
    }),
    disks: (observed?.disks ?? []).map((d) => ({ id: d.id, ref: d.ref, sizeBytes: d.sizeBytes, owned: d.owned, ...(d.image ? { image: d.image } : {}), ...(owners.has(d.id) ? { vmi: owners.get(d.id) } : {}) })),
    controllers: (observed?.controllers ?? []).map((c) => ({ name: c.name, diskRef: c.diskRef, socketPath: c.socketPath, sessions: c.sessions, readonly: c.readonly })),
    vmis: report.vmis,
    orphans: plan.flatMap((a) =>
      a.kind === 'reportOrphan' ? [{ object: a.object, name: a.name, firstSeen: new Date(a.firstSeen).toISOString(), collectAt: new Date(a.collectAt).toISOString() }] : [],
    ),
    blocked: plan.flatMap((a) => (a.kind === 'reportBlocked' ? [{ object: a.object, name: a.name, reason: a.reason }] : [])),
    problems: report.problems,
  };
}
