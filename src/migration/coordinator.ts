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
 * VMI over (its controllers go, its disks stay exported) until the target publishes that a
 * disk stands alone there: then that export is no longer wanted (the reconciler unexports and
 * deletes the disk; the slot is released with it). After failure or abort stop exporting,
 * never touching the running VM.
 * Target: once every node-local disk has a published export and the target pod has its slot,
 * serve the VMI here with those disks as lazy clones of the exports (same `<slot>/<disk>`
 * layout; attached as they are when the backend cannot clone), and report the slot ready when
 * the agent serves every disk. Nothing is copied before switchover (the source's QEMU still
 * writes); after success the clones hydrate, and each disk that stands alone is recorded (and
 * published) and served as this node's own. After failure or abort serve nothing (the
 * reconciler removes the controllers and deletes the clones, which hold nothing the guest
 * wrote: it never ran here).
 * A record planned after KubeVirt moved on to a newer migration of the VMI (A -> B -> A) is
 * finished with planFinished; until it keeps nothing, the newer migration waits (target) or is
 * refused (source: its disks still copy from the previous node).
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
  /** A migrated disk's copy (its status' `migration`). */
  migration?: { phase: string; percent?: number };
}

export interface CoordinatorInput {
  node: string;
  state: MigrationState | undefined;
  disks: readonly MigratingDisk[];
  /** This node's slot of the VMI: the source's slot, or the target pod's once allocated. */
  slot: string | undefined;
  /** Whether this node's backend implements exportDisk/attachRemoteDisk. */
  backendCanMigrate: boolean;
  /** Target: whether this node's backend implements cloneRemoteDisk/hydrateDisk (else the data stays on the source). */
  backendCanClone?: boolean;
  /** Source: disks the target published as standing alone, for this migration. */
  targetHydrated?: ReadonlySet<string>;
  /** Why the migration must wait (target) or is refused (source): an earlier migration's record still keeps something here. */
  blockedBy?: string;
  /** Where this node's exports listen (source). */
  exportAddress: ListenAddress;
  /** The source's published exports by disk name (target); absent until the source made them. */
  sourceExports: Readonly<Record<string, RemoteDiskRef>> | undefined;
  /** What the agent holds here now: the exports it made (source) and the VMI's disks (target), by disk name. */
  here: {
    exported: Readonly<Record<string, RemoteDiskRef>>;
    disks: Readonly<Record<string, DiskHere>>;
    /** Target: disks whose id this node still holds from before (an earlier copy, A -> B -> A): not cloned until it is gone. */
    earlierCopies?: readonly string[];
  };
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
  /** Target: the disk stands alone here; source: the target said so (the export is released). */
  | { type: 'recordHydrated'; disk: string }
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

export function freshJournal(migrationUid: string, role: 'source' | 'target', peer?: string): MigrationJournal {
  return { migrationUid, role, exports: {}, attached: {}, controllers: {}, dataNode: {}, hydrated: [], ...(peer !== undefined ? { peer } : {}), phase: 'preparing' };
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
      case 'recordHydrated':
        if (!out.hydrated.includes(a.disk)) out = { ...out, hydrated: [...out.hydrated, a.disk].sort() };
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

/**
 * What a target serves from its record: each remote disk attached, or cloned lazily (hydrating
 * once the migration succeeded); a disk that stands alone here is this node's own again.
 */
function servedFrom(j: MigrationJournal): Pick<VmiMigrationIntent, 'serve'> {
  if (j.phase === 'rolledBack' || j.phase === 'refused') return {};
  const hydrate = j.phase === 'serving';
  const remote = Object.entries(j.attached).flatMap(([disk, a]): Array<[string, AttachedDisk]> => {
    if (a.kind !== 'remote' || j.hydrated.includes(disk)) return [];
    return [[disk, { ref: a.ref, node: a.node, ...(a.lazy ? { lazy: { migration: j.migrationUid, hydrate } } : {}) }]];
  });
  if (Object.keys(j.attached).length === 0) return {};
  return { serve: { attached: Object.fromEntries(remote) } };
}

/** The state KubeVirt no longer shows for an earlier migration this node's record says succeeded. */
function finishedState(node: string, j: MigrationJournal): MigrationState {
  const peer = j.peer ?? '';
  return { migrationUid: j.migrationUid, sourceNode: j.role === 'source' ? node : peer, targetNode: j.role === 'target' ? node : peer, completed: true };
}

/** Plans a record of an earlier migration that KubeVirt reported succeeded (the VMI moved on since). */
export function planFinished(input: Omit<CoordinatorInput, 'state' | 'journal'>, j: MigrationJournal): MigrationPlan {
  const s = finishedState(input.node, j);
  const i = { ...input, state: s, journal: j };
  return j.role === 'source' ? planSource(i, s, j) : planTarget(i, s, j);
}

/** Why an earlier migration's record still holds this node (undefined once it keeps nothing). */
export function stillHeldBy(j: MigrationJournal): string | undefined {
  const peer = j.peer ?? 'the other node';
  if (j.role === 'source' && Object.keys(j.exports).length > 0) {
    return `the previous migration (${j.migrationUid}) still reads disk(s) ${Object.keys(j.exports).sort().join(', ')} from this node until ${peer} holds every byte`;
  }
  if (j.role !== 'target' || j.phase === 'rolledBack' || j.phase === 'refused') return undefined;
  const remote = Object.entries(j.attached).filter(([disk, a]) => a.kind === 'remote' && !j.hydrated.includes(disk));
  const attached = remote.filter(([, a]) => a.kind === 'remote' && a.lazy !== true).map(([d]) => d);
  if (attached.length > 0) {
    return `disk(s) ${attached.sort().join(', ')} are served from ${peer}'s export since migration ${j.migrationUid} (this node's storage backend cannot copy them): they cannot migrate again`;
  }
  if (remote.length > 0) {
    return `disk(s) ${remote.map(([d]) => d).sort().join(', ')} still read from ${peer} after the previous migration (${j.migrationUid}); migrate again once they are hydrated`;
  }
  return undefined;
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
  const peer = role === 'source' ? s.targetNode : s.sourceNode;
  const journal = input.journal && input.journal.migrationUid === key && input.journal.role === role ? input.journal : freshJournal(key, role, peer);
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
    // The target serves now; each export stays until the target says the disk stands alone there.
    const target = s.targetNode ?? j.peer ?? '';
    const steps: MigrationStep[] = [];
    for (const d of local) {
      const done = input.targetHydrated?.has(d.name) === true || j.hydrated.includes(d.name);
      const dataNode = done ? target : input.node;
      if (j.dataNode[d.name] !== dataNode) steps.push({ type: 'recordDataNode', disk: d.name, node: dataNode });
      if (done && !j.hydrated.includes(d.name)) steps.push({ type: 'recordHydrated', disk: d.name });
      if (done && j.exports[d.name] !== undefined) steps.push({ type: 'forgetExport', disk: d.name });
    }
    const next = applySteps(j, steps);
    return plan('source', outcome, j, { exports: exportsOf(Object.keys(next.exports)), handedOver: true }, [...steps, ...phaseStep(j, 'handedOver')]);
  }
  if (outcome === 'failed' || outcome === 'aborted') {
    // The VM keeps running here: only what the migration added goes.
    const steps: MigrationStep[] = Object.keys(j.exports).map((disk) => ({ type: 'forgetExport', disk }));
    return plan('source', outcome, j, noIntent(), [...steps, ...phaseStep(j, 'rolledBack')]);
  }

  const refusal =
    refusalOf(s) ?? (local.length > 0 && !input.backendCanMigrate ? 'this node\'s storage backend cannot export disks for migration' : undefined) ?? input.blockedBy;
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
    // After switchover: the lazy clones hydrate; one that stands alone is this node's own.
    const steps: MigrationStep[] = [];
    const sourceNode = s.sourceNode ?? j.peer;
    for (const d of input.disks) {
      const a = j.attached[d.name];
      if (d.source.kind !== 'local' || a?.kind !== 'remote') continue;
      const done = j.hydrated.includes(d.name) || (a.lazy === true && j.phase === 'serving' && input.here.disks[d.name]?.migration?.phase === 'Hydrated');
      if (done && !j.hydrated.includes(d.name)) steps.push({ type: 'recordHydrated', disk: d.name });
      const dataNode = done ? input.node : sourceNode;
      if (dataNode !== undefined && j.dataNode[d.name] !== dataNode) steps.push({ type: 'recordDataNode', disk: d.name, node: dataNode });
    }
    const next = applySteps(j, [...steps, ...phaseStep(j, 'serving')]);
    return plan('target', outcome, j, { exports: [], handedOver: false, ...servedFrom(next) }, [...steps, ...phaseStep(j, 'serving')], { targetReady: true });
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
  // An earlier migration's copy of these disks is still here (A -> B -> A): cloned only once it is gone.
  if (input.blockedBy !== undefined) return plan('target', outcome, j, noIntent(), [], { reason: `waiting: ${input.blockedBy}` });
  const earlier = local.filter((d) => input.here.earlierCopies?.includes(d.name) && j.attached[d.name] === undefined).map((d) => d.name);
  if (earlier.length > 0) return plan('target', outcome, j, noIntent(), [], { reason: `waiting for this node's earlier copy of disk(s) ${earlier.join(', ')} to be deleted` });

  // Served only once every node-local disk can be attached: a fresh clone is never made in its place.
  const waiting = local.filter((d) => input.sourceExports?.[d.name] === undefined).map((d) => d.name);
  if (waiting.length > 0) return plan('target', outcome, j, noIntent(), [], { reason: `waiting for the source node to export disk(s) ${waiting.join(', ')}` });
  const steps: MigrationStep[] = [];
  for (const d of input.disks) {
    const ref = input.sourceExports?.[d.name];
    const want: MigrationJournal['attached'][string] | undefined =
      d.source.kind === 'bdev'
        ? { kind: 'shared', bdev: d.source.bdev }
        : ref && { kind: 'remote', ref, node: s.sourceNode ?? '', ...((lazyOf(j.attached[d.name]) ?? input.backendCanClone === true) ? { lazy: true } : {}) };
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

/** Whether a recorded remote disk is a lazy clone (kept once recorded: a clone is never swapped for an attach). */
function lazyOf(a: MigrationJournal['attached'][string] | undefined): boolean | undefined {
  return a?.kind === 'remote' ? (a.lazy ?? false) : undefined;
}
