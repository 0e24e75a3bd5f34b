import { controllerName } from '../agent/naming.js';
import type { ListenAddress, RemoteDiskRef } from '../backend/remote.js';
import type { MigrationJournal, MigrationState } from './schemas.js';

/**
 * The live-migration state machine of one node for one VMI. Pure: from KubeVirt's
 * `status.migrationState`, this node's name, the VMI's disks and what this node already did
 * (its journal), it returns the actions still to do and what to report. Every action is
 * idempotent and the journal is updated after each, so an agent that restarts mid-migration
 * plans again from the same inputs and converges on the same end state.
 *
 * Source: export node-local disks (shared `bdev:` volumes need nothing); after success delete
 * its controllers but keep the exports, since the data stays here; after failure or abort drop
 * the exports, never touching the running VM's controllers.
 * Target: attach the source's exports (or open the shared bdev) and create controllers at the
 * same `<slot>/<disk>` layout before the target's compute container starts, then report the
 * slot ready; after success serve; after failure or abort tear down what it made.
 * Refused: post-copy (SPDK's vhost target migrates pre-copy only), a backend that cannot
 * export or attach, an export the target cannot reach.
 */

export interface MigratingDisk {
  /** Disk (volume) name: the controller is `<slot>/<name>` on both nodes. */
  name: string;
  /** Backend disk id, the same on both nodes (derived from VMI uid and disk name). */
  diskId: string;
  /** `local`: a node-local clone, exported by the source; `bdev`: shared, opened by name. */
  source: { kind: 'local' } | { kind: 'bdev'; bdev: string };
  readonly: boolean;
  queues?: number;
}

export interface CoordinatorInput {
  node: string;
  state: MigrationState | undefined;
  disks: readonly MigratingDisk[];
  /** This node's slot of the VMI: the source's slot, or the target pod's once allocated. */
  slot: string | undefined;
  /** Whether this node's backend implements exportDisk/attachRemoteDisk. */
  backendCanMigrate: boolean;
  /** Where this node's exports listen (source). */
  exportAddress: ListenAddress;
  /** The source's published exports by disk name (target); absent until the source made them. */
  sourceExports: Readonly<Record<string, RemoteDiskRef>> | undefined;
  journal: MigrationJournal | undefined;
}

export type MigrationAction =
  | { type: 'export'; disk: string; diskId: string; address: ListenAddress }
  | { type: 'unexport'; disk: string; diskId: string }
  | { type: 'attachRemote'; disk: string; diskId: string; ref: RemoteDiskRef }
  | { type: 'openShared'; disk: string; diskId: string; bdev: string }
  | { type: 'createController'; disk: string; controller: string; readonly: boolean; queues?: number }
  | { type: 'deleteController'; disk: string; controller: string }
  | { type: 'detachRemote'; disk: string; diskId: string }
  | { type: 'reportTargetReady'; slot: string }
  | { type: 'recordDataNode'; disk: string; node: string }
  | { type: 'setPhase'; phase: MigrationJournal['phase'] };

export type Role = 'source' | 'target' | 'none';
export type Outcome = 'running' | 'succeeded' | 'failed' | 'aborted';

export interface MigrationPlan {
  role: Role;
  outcome: Outcome;
  actions: MigrationAction[];
  /** Target: every controller exists (the device plugin may let the compute container start). */
  targetReady: boolean;
  /** Why nothing (more) is done: refused, or waiting for something. */
  reason?: string;
  refused: boolean;
  /** The journal to start from (a fresh one for a new migration). */
  journal: MigrationJournal | undefined;
}

export function outcomeOf(s: MigrationState): Outcome {
  if (s.abortStatus === 'Succeeded') return 'aborted';
  if (s.failed === true) return 'failed';
  if (s.completed === true) return 'succeeded';
  return 'running';
}

/** Why this migration must not go on with our disks, or undefined. */
export function refusalOf(s: MigrationState): string | undefined {
  if (s.mode === 'PostCopy') {
    return 'post-copy migration is not supported: the SPDK vhost target migrates pre-copy only (set allowPostCopy: false in the migration policy)';
  }
  if (s.migrationConfiguration?.allowPostCopy === true) {
    return 'the migration allows post-copy, which the SPDK vhost target cannot follow (pre-copy only); set allowPostCopy: false in the migration policy';
  }
  return undefined;
}

export function freshJournal(migrationUid: string, role: 'source' | 'target'): MigrationJournal {
  return { migrationUid, role, exports: {}, attached: {}, controllers: {}, dataNode: {}, phase: 'preparing' };
}

/** A stable id of a migration: KubeVirt's uid, else its start (older status without uid). */
export const migrationKey = (s: MigrationState): string => s.migrationUid ?? `${s.sourceNode ?? ''}->${s.targetNode ?? ''}@${s.startTimestamp ?? ''}`;

export function planMigration(input: CoordinatorInput): MigrationPlan {
  const s = input.state;
  const none = (reason?: string): MigrationPlan => ({
    role: 'none',
    outcome: s ? outcomeOf(s) : 'running',
    actions: [],
    targetReady: false,
    refused: false,
    journal: input.journal,
    ...(reason ? { reason } : {}),
  });
  if (!s) return none();
  const role: Role = s.targetNode === input.node ? 'target' : s.sourceNode === input.node ? 'source' : 'none';
  if (role === 'none') return none();
  const key = migrationKey(s);
  const journal = input.journal && input.journal.migrationUid === key && input.journal.role === role ? input.journal : freshJournal(key, role);
  return role === 'source' ? planSource(input, s, journal) : planTarget(input, s, journal);
}

function plan(role: Role, outcome: Outcome, journal: MigrationJournal, actions: MigrationAction[], extra: Partial<MigrationPlan> = {}): MigrationPlan {
  return { role, outcome, actions, targetReady: false, refused: false, journal, ...extra };
}

function planSource(input: CoordinatorInput, s: MigrationState, j: MigrationJournal): MigrationPlan {
  const outcome = outcomeOf(s);
  const local = input.disks.filter((d) => d.source.kind === 'local');
  const phase = (p: MigrationJournal['phase']): MigrationAction[] => (j.phase === p ? [] : [{ type: 'setPhase', phase: p }]);

  if (outcome === 'succeeded') {
    // The target serves now; the data stays here, so the exports stay too.
    const actions: MigrationAction[] = [];
    for (const d of local) if (j.dataNode[d.name] !== input.node) actions.push({ type: 'recordDataNode', disk: d.name, node: input.node });
    if (input.slot !== undefined) {
      for (const d of input.disks) {
        if (j.controllers[d.name] === undefined) actions.push({ type: 'deleteController', disk: d.name, controller: controllerName(input.slot, d.name) });
      }
    }
    return plan('source', outcome, j, [...actions, ...phase('handedOver')]);
  }
  if (outcome === 'failed' || outcome === 'aborted') {
    // The VM keeps running here: only what the migration added goes.
    const actions: MigrationAction[] = Object.keys(j.exports).flatMap((name) => {
      const d = input.disks.find((x) => x.name === name);
      return [{ type: 'unexport' as const, disk: name, diskId: d?.diskId ?? name }];
    });
    return plan('source', outcome, j, [...actions, ...phase('rolledBack')]);
  }

  const refusal = refusalOf(s) ?? (local.length > 0 && !input.backendCanMigrate ? 'this node\'s storage backend cannot export disks for migration' : undefined);
  if (refusal) return plan('source', outcome, j, phase('refused'), { refused: true, reason: refusal });
  const actions: MigrationAction[] = local
    .filter((d) => j.exports[d.name] === undefined)
    .map((d) => ({ type: 'export' as const, disk: d.name, diskId: d.diskId, address: input.exportAddress }));
  return plan('source', outcome, j, [...actions, ...phase('ready')]);
}

function planTarget(input: CoordinatorInput, s: MigrationState, j: MigrationJournal): MigrationPlan {
  const outcome = outcomeOf(s);
  const phase = (p: MigrationJournal['phase']): MigrationAction[] => (j.phase === p ? [] : [{ type: 'setPhase', phase: p }]);

  if (outcome === 'succeeded') {
    const actions: MigrationAction[] = [];
    for (const d of input.disks) {
      if (d.source.kind === 'local' && s.sourceNode !== undefined && j.dataNode[d.name] !== s.sourceNode) {
        actions.push({ type: 'recordDataNode', disk: d.name, node: s.sourceNode });
      }
    }
    return plan('target', outcome, j, [...actions, ...phase('serving')], { targetReady: true });
  }
  if (outcome === 'failed' || outcome === 'aborted') return plan('target', outcome, j, [...teardown(input, j), ...phase('rolledBack')]);

  const refusal =
    refusalOf(s) ??
    (input.disks.some((d) => d.source.kind === 'local') && !input.backendCanMigrate
      ? 'this node\'s storage backend cannot attach disks exported by the source node'
      : undefined) ??
    (j.unreachable ? `the source's export of disk ${j.unreachable.disk} cannot be reached: ${j.unreachable.message}` : undefined);
  if (refusal) {
    // Nothing we made can be used: give it back now rather than when KubeVirt gives up.
    return plan('target', outcome, j, [...teardown(input, j), ...phase('refused')], { refused: true, reason: refusal });
  }
  if (input.slot === undefined) return plan('target', outcome, j, [], { reason: 'waiting for the target pod\'s vhost slot' });

  const actions: MigrationAction[] = [];
  const waiting: string[] = [];
  for (const d of input.disks) {
    if (j.controllers[d.name] !== undefined) continue;
    if (j.attached[d.name] !== undefined) {
      // opened already: only the controller is missing
    } else if (d.source.kind === 'bdev') {
      actions.push({ type: 'openShared', disk: d.name, diskId: d.diskId, bdev: d.source.bdev });
    } else {
      const ref = input.sourceExports?.[d.name];
      if (!ref) {
        waiting.push(d.name);
        continue;
      }
      actions.push({ type: 'attachRemote', disk: d.name, diskId: d.diskId, ref });
    }
    actions.push({
      type: 'createController',
      disk: d.name,
      controller: controllerName(input.slot, d.name),
      readonly: d.readonly,
      ...(d.queues !== undefined ? { queues: d.queues } : {}),
    });
  }
  if (waiting.length > 0) {
    return plan('target', outcome, j, actions, { reason: `waiting for the source node to export disk(s) ${waiting.join(', ')}` });
  }
  // Reported once, after the last controller: the executor stops at the first failed action.
  const report: MigrationAction[] = j.phase === 'ready' ? [] : [{ type: 'reportTargetReady', slot: input.slot }, ...phase('ready')];
  return plan('target', outcome, j, [...actions, ...report], { targetReady: actions.length === 0 });
}

/** Target rollback: controllers first (they serve the remote disks), then the remote disks. */
function teardown(input: CoordinatorInput, j: MigrationJournal): MigrationAction[] {
  const out: MigrationAction[] = [];
  for (const [disk, controller] of Object.entries(j.controllers)) out.push({ type: 'deleteController', disk, controller });
  for (const [disk, a] of Object.entries(j.attached)) {
    if (a.kind !== 'remote') continue; // a shared bdev is not ours to close
    out.push({ type: 'detachRemote', disk, diskId: input.disks.find((d) => d.name === disk)?.diskId ?? disk });
  }
  return out;
}
