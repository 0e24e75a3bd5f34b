import type { AttachedDisk, DesiredExport } from '../agent/desired.js';
import type { ListenAddress, RemoteDiskRef } from '../backend/remote.js';
import { controllerName } from '../contract/index.js';
import type { MigrationJournal, MigrationState } from './schemas.js';

/**
 * The live-migration planner of one node for one VMI. Pure: from KubeVirt's
 * `status.migrationState`, this node's name, the VMI's disks, what the node's agent holds now
 * and what this node recorded so far (its journal), it returns the node's *migration intent*
 * for the VMI, the record updates and what to report. It calls nothing: the intent becomes
 * part of the node view, and the agent's one reconciler makes it so (with journal, safety
 * re-checks and retries), so a planner that runs again after any restart converges.
 *
 * Source: export node-local disks (shared `bdev:` volumes need nothing); after success hand the
 * VMI over (its controllers go, its disks stay exported: the data stays here); after failure or
 * abort stop exporting, never touching the running VM.
 * Target: once every node-local disk has a published export and the target pod has its slot,
 * serve the VMI here with those disks attached (same `<slot>/<disk>` layout), and report the
 * slot ready when the agent serves every disk; after success keep serving; after failure or
 * abort serve nothing (the reconciler removes the controllers and detaches).
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

/** A disk as this node's agent reports it (its status). */
export interface DiskHere {
  phase: string;
  message?: string;
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
  /** What the agent holds here now: the exports it made (source) and the VMI's disks (target), by disk name. */
  here: { exported: Readonly<Record<string, RemoteDiskRef>>; disks: Readonly<Record<string, DiskHere>> };
  journal: MigrationJournal | undefined;
}

/** What the node should do for one VMI's migration: part of the node view. */
export interface VmiMigrationIntent {
  /** Source: disks to export (an exported disk is kept, whatever else happens to its VMI). */
  exports: Array<{ disk: string; diskId: string; address: ListenAddress }>;
  /** Target: serve the VMI here, its node-local disks attached from the source (by disk name). */
  serve?: { attached: Record<string, AttachedDisk> };
  /** Source after success: the VMI's controllers go, its disks stay while exported. */
  handedOver: boolean;
}

/** The migration intent of a whole node: what the node view takes from migrations. */
export interface NodeMigrationIntent {
  /** VMIs served here from another node's exports, by VMI uid. */
  serve: ReadonlyMap<string, NonNullable<VmiMigrationIntent['serve']>>;
  /** VMIs handed over to another node, by uid: their controllers go. */
  handedOver: ReadonlySet<string>;
  exports: DesiredExport[];
}

export const noNodeIntent = (): NodeMigrationIntent => ({ serve: new Map(), handedOver: new Set(), exports: [] });

/** Record updates and reports: the planner's bookkeeping (applied by `applySteps`). */
export type MigrationStep =
  | { type: 'recordExport'; disk: string; ref: RemoteDiskRef }
  | { type: 'forgetExport'; disk: string }
  | { type: 'recordAttached'; disk: string; attached: MigrationJournal['attached'][string] }
  | { type: 'recordController'; disk: string; controller: string }
  /** Target teardown: the disk is no longer served here (the reconciler removes what it made). */
  | { type: 'forgetServed'; disk: string }
  | { type: 'recordUnreachable'; disk: string; message: string }
  | { type: 'recordDataNode'; disk: string; node: string }
  /** The target slot is ready: the device plugin may let the compute container start. */
  | { type: 'reportTargetReady'; slot: string }
  | { type: 'setPhase'; phase: MigrationJournal['phase'] };

export type Role = 'source' | 'target' | 'none';
export type Outcome = 'running' | 'succeeded' | 'failed' | 'aborted';

export interface MigrationPlan {
  role: Role;
  outcome: Outcome;
  /** What the node should hold for the VMI (applies once `actions` are recorded). */
  intent: VmiMigrationIntent;
  /** Record updates and reports, in order. */
  actions: MigrationStep[];
  /** Target: every disk is served here (the device plugin may let the compute container start). */
  targetReady: boolean;
  /** Why nothing (more) is done: refused, or waiting for something. */
  reason?: string;
  refused: boolean;
  /** The journal to start from (a fresh one for a new migration). */
  journal: MigrationJournal | undefined;
}

export const noIntent = (): VmiMigrationIntent => ({ exports: [], handedOver: false });

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

/** The journal after the steps. */
export function applySteps(j: MigrationJournal, steps: readonly MigrationStep[]): MigrationJournal {
  const without = <T>(r: Record<string, T>, k: string): Record<string, T> => Object.fromEntries(Object.entries(r).filter(([key]) => key !== k));
  let out = j;
  for (const a of steps) {
    switch (a.type) {
      case 'recordExport':
        out = { ...out, exports: { ...out.exports, [a.disk]: a.ref } };
        break;
      case 'forgetExport':
        out = { ...out, exports: without(out.exports, a.disk) };
        break;
      case 'recordAttached':
        out = { ...out, attached: { ...out.attached, [a.disk]: a.attached } };
        break;
      case 'recordController':
        out = { ...out, controllers: { ...out.controllers, [a.disk]: a.controller } };
        break;
      case 'forgetServed':
        out = { ...out, attached: without(out.attached, a.disk), controllers: without(out.controllers, a.disk) };
        break;
      case 'recordUnreachable':
        out = { ...out, unreachable: { disk: a.disk, message: a.message } };
        break;
      case 'recordDataNode':
        out = { ...out, dataNode: { ...out.dataNode, [a.disk]: a.node } };
        break;
      case 'setPhase':
        out = { ...out, phase: a.phase };
        break;
      case 'reportTargetReady':
        break;
    }
  }
  return out;
}

/**
 * The intent a record alone calls for (an agent that restarted before its first plan): a
 * source keeps exporting what it exported, a target keeps serving what it attached.
 */
export function intentOfRecord(j: MigrationJournal, diskIdOf: (disk: string) => string): VmiMigrationIntent {
  if (j.role === 'source') {
    const exports = Object.entries(j.exports).map(([disk, ref]) => ({ disk, diskId: diskIdOf(disk), address: listenAddressOf(ref) }));
    return { exports, handedOver: j.phase === 'handedOver' };
  }
  return { exports: [], handedOver: false, ...servedFrom(j) };
}

/** Where an export listens, from the ref it published. */
export function listenAddressOf(ref: RemoteDiskRef): ListenAddress {
  return ref.transport === 'nvmf-tcp' ? { kind: 'tcp', host: ref.host, port: ref.port } : ref.address;
}

function servedFrom(j: MigrationJournal): Pick<VmiMigrationIntent, 'serve'> {
  if (j.phase === 'rolledBack' || j.phase === 'refused') return {};
  const remote = Object.entries(j.attached).flatMap(([disk, a]) => (a.kind === 'remote' ? [[disk, { ref: a.ref, node: a.node }] as const] : []));
  if (Object.keys(j.attached).length === 0) return {};
  return { serve: { attached: Object.fromEntries(remote) } };
}

export function planMigration(input: CoordinatorInput): MigrationPlan {
  const s = input.state;
  const none = (reason?: string): MigrationPlan => ({
    role: 'none',
    outcome: s ? outcomeOf(s) : 'running',
    intent: noIntent(),
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

function plan(role: Role, outcome: Outcome, journal: MigrationJournal, intent: VmiMigrationIntent, actions: MigrationStep[], extra: Partial<MigrationPlan> = {}): MigrationPlan {
  return { role, outcome, intent, actions, targetReady: false, refused: false, journal, ...extra };
}

const phaseStep = (j: MigrationJournal, p: MigrationJournal['phase']): MigrationStep[] => (j.phase === p ? [] : [{ type: 'setPhase', phase: p }]);

function planSource(input: CoordinatorInput, s: MigrationState, j: MigrationJournal): MigrationPlan {
  const outcome = outcomeOf(s);
  const local = input.disks.filter((d) => d.source.kind === 'local');
  const exportsOf = (names: readonly string[]): VmiMigrationIntent['exports'] =>
    local.filter((d) => names.includes(d.name)).map((d) => ({ disk: d.name, diskId: d.diskId, address: input.exportAddress }));

  if (outcome === 'succeeded') {
    // The target serves now; the data stays here, so the exports stay too.
    const steps: MigrationStep[] = local.filter((d) => j.dataNode[d.name] !== input.node).map((d) => ({ type: 'recordDataNode', disk: d.name, node: input.node }));
    return plan('source', outcome, j, { exports: exportsOf(Object.keys(j.exports)), handedOver: true }, [...steps, ...phaseStep(j, 'handedOver')]);
  }
  if (outcome === 'failed' || outcome === 'aborted') {
    // The VM keeps running here: only what the migration added goes.
    const steps: MigrationStep[] = Object.keys(j.exports).map((disk) => ({ type: 'forgetExport', disk }));
    return plan('source', outcome, j, noIntent(), [...steps, ...phaseStep(j, 'rolledBack')]);
  }

  const refusal = refusalOf(s) ?? (local.length > 0 && !input.backendCanMigrate ? 'this node\'s storage backend cannot export disks for migration' : undefined);
  if (refusal) {
    const steps: MigrationStep[] = Object.keys(j.exports).map((disk) => ({ type: 'forgetExport', disk }));
    return plan('source', outcome, j, noIntent(), [...steps, ...phaseStep(j, 'refused')], { refused: true, reason: refusal });
  }
  // Exports the agent made are recorded (and so published to the target).
  const steps: MigrationStep[] = [];
  const waiting: string[] = [];
  for (const d of local) {
    const ref = input.here.exported[d.name];
    if (ref === undefined) waiting.push(d.name);
    else if (JSON.stringify(j.exports[d.name]) !== JSON.stringify(ref)) steps.push({ type: 'recordExport', disk: d.name, ref });
  }
  const intent: VmiMigrationIntent = { exports: exportsOf(local.map((d) => d.name)), handedOver: false };
  if (waiting.length) return plan('source', outcome, j, intent, steps, { reason: `waiting for this node to export disk(s) ${waiting.join(', ')}` });
  return plan('source', outcome, j, intent, [...steps, ...phaseStep(j, 'ready')]);
}

function planTarget(input: CoordinatorInput, s: MigrationState, j: MigrationJournal): MigrationPlan {
  const outcome = outcomeOf(s);
  const teardown = (): MigrationStep[] => [...new Set([...Object.keys(j.attached), ...Object.keys(j.controllers)])].map((disk) => ({ type: 'forgetServed', disk }));

  if (outcome === 'succeeded') {
    const steps: MigrationStep[] = [];
    for (const d of input.disks) {
      if (d.source.kind === 'local' && s.sourceNode !== undefined && j.dataNode[d.name] !== s.sourceNode) steps.push({ type: 'recordDataNode', disk: d.name, node: s.sourceNode });
    }
    return plan('target', outcome, j, { exports: [], handedOver: false, ...servedFrom(j) }, [...steps, ...phaseStep(j, 'serving')], { targetReady: true });
  }
  if (outcome === 'failed' || outcome === 'aborted') return plan('target', outcome, j, noIntent(), [...teardown(), ...phaseStep(j, 'rolledBack')]);

  const local = input.disks.filter((d) => d.source.kind === 'local');
  // A disk the agent could not attach because the source's export cannot be reached (the agent says so).
  const failedHere = Object.keys(j.attached).length > 0 ? local.find((d) => input.here.disks[d.name]?.phase === 'Failed' && /unreachable/.test(input.here.disks[d.name]?.message ?? '')) : undefined;
  const unreachable = j.unreachable ?? (failedHere ? { disk: failedHere.name, message: input.here.disks[failedHere.name]?.message ?? 'failed' } : undefined);
  const refusal =
    refusalOf(s) ??
    (local.length > 0 && !input.backendCanMigrate ? 'this node\'s storage backend cannot attach disks exported by the source node' : undefined) ??
    (unreachable ? `the source's export of disk ${unreachable.disk} cannot be reached: ${unreachable.message}` : undefined);
  if (refusal) {
    // Nothing we made can be used: give it back now rather than when KubeVirt gives up.
    const note: MigrationStep[] = unreachable && !j.unreachable ? [{ type: 'recordUnreachable', disk: unreachable.disk, message: unreachable.message }] : [];
    return plan('target', outcome, j, noIntent(), [...note, ...teardown(), ...phaseStep(j, 'refused')], { refused: true, reason: refusal });
  }
  if (input.slot === undefined) return plan('target', outcome, j, noIntent(), [], { reason: 'waiting for the target pod\'s vhost slot' });

  // Served only once every node-local disk can be attached: a fresh clone is never made in its place.
  const waiting = local.filter((d) => input.sourceExports?.[d.name] === undefined).map((d) => d.name);
  if (waiting.length > 0) return plan('target', outcome, j, noIntent(), [], { reason: `waiting for the source node to export disk(s) ${waiting.join(', ')}` });
  const steps: MigrationStep[] = [];
  for (const d of input.disks) {
    const ref = input.sourceExports?.[d.name];
    const want: MigrationJournal['attached'][string] | undefined =
      d.source.kind === 'bdev' ? { kind: 'shared', bdev: d.source.bdev } : ref && { kind: 'remote', ref, node: s.sourceNode ?? '' };
    if (want && JSON.stringify(j.attached[d.name]) !== JSON.stringify(want)) steps.push({ type: 'recordAttached', disk: d.name, attached: want });
  }
  const next = applySteps(j, steps);
  const intent: VmiMigrationIntent = { exports: [], handedOver: false, ...servedFrom(next) };
  const served = input.disks.every((d) => input.here.disks[d.name]?.phase === 'Ready');
  if (!served) return plan('target', outcome, j, intent, steps, { reason: 'waiting for the agent to serve every disk at the target slot' });
  for (const d of input.disks) {
    const controller = controllerName(input.slot, d.name);
    if (j.controllers[d.name] !== controller) steps.push({ type: 'recordController', disk: d.name, controller });
  }
  // Reported once, when the last disk is served.
  const report: MigrationStep[] = j.phase === 'ready' ? [] : [{ type: 'reportTargetReady', slot: input.slot }, ...phaseStep(j, 'ready')];
  return plan('target', outcome, j, intent, [...steps, ...report], { targetReady: true });
}
