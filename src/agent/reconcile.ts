import type { VmiRef } from '../api/status.js';
import type { ControllerSpec, DiskSpec, ImageSpec, ListenAddress, ObservedController, ObservedState, RemoteDiskRef } from '../backend/types.js';
import { capacityProblem, isOurControllerName, isOurDiskId } from '../contract/index.js';
import type { DesiredDisk, DesiredState } from './desired.js';
import { chooseEvictions, importInProgress, type CacheEntry, type CacheLimits } from './image-cache.js';
import type { JournalState } from './journal.js';
import { warmImports } from './warm.js';
import type { RetargetImageAction } from './source-failover.js';
import { indexDesired, whyNotCreateController, whyNotDeleteController, whyNotDeleteDisk, whyNotDetachDisk, whyNotEvictImage, type SafetyContext } from './safety.js';

/**
 * The reconciler: a pure function from (desired state, the backend's listing, the agent's
 * memory) to an ordered list of actions. Level-triggered and idempotent: it never trusts that
 * an earlier action happened, it only looks at what is there, so running it again after a
 * crash at any point converges.
 *
 * Order: deleteController, unexportDisk, detachDisk, deleteDisk (before anything is created, so
 * that names and bdevs are free), then one chain per desired disk (ensureImage -> ensureDisk or
 * attachDisk -> ensureController -> fixSocket), then ensureExport (after the controllers: spdk's
 * nvmf claims a bdev that vhost must already have open), then evictImage; the report* actions
 * change nothing on the backend. An attached disk (another node's) is only ever attached and
 * detached, never created or deleted here. A remote clone (a migration target's disk) is made
 * by cloneDisk, is owned like any disk, and hydrates (hydrateDisk) only when its source says so.
 */

export interface SocketStat {
  uid: number;
  gid: number;
  /** Permission bits (mode & 0o777). */
  mode: number;
}

export interface SocketPolicy {
  uid: number;
  gid: number;
  mode: number;
}

/** Identifies the desired disk an action is for (status, logs). */
export interface DiskTarget {
  key: string;
  vmi: VmiRef;
  disk: string;
  slot: string;
}

export type Action =
  | { kind: 'ensureImage'; target: DiskTarget; image: ImageSpec }
  /** Prefetch: imports an image no disk needs yet (its import runs beside the rounds, as ensureImage's). */
  | { kind: 'warmImage'; image: ImageSpec }
  | { kind: 'ensureDisk'; target: DiskTarget; spec: DiskSpec }
  /** Opens a disk another node exports as the local disk `id`. */
  | { kind: 'attachDisk'; target: DiskTarget; id: string; ref: RemoteDiskRef; node: string }
  /** Makes the local disk `id` a copy-on-write clone of another node's export (a migration target's). */
  | { kind: 'cloneDisk'; target: DiskTarget; id: string; ref: RemoteDiskRef; node: string; migration: string }
  /** Starts or follows the copy of a remote clone's data (after switchover); changes nothing observed, so a round converges with it. */
  | { kind: 'hydrateDisk'; target: DiskTarget; id: string; node: string }
  /** `diskRef` is absent when the disk is created earlier in the same chain. */
  | { kind: 'ensureController'; target: DiskTarget; spec: Omit<ControllerSpec, 'diskRef'> & { diskRef?: string } }
  /** `path` is absent when the controller is created earlier in the same chain. */
  | { kind: 'fixSocket'; target: DiskTarget; controller: string; path?: string; policy: SocketPolicy }
  | { kind: 'reportReady'; target: DiskTarget; socket: string }
  | { kind: 'deleteController'; name: string; diskRef: string; reason: string; target?: DiskTarget }
  | { kind: 'deleteDisk'; id: string; reason: string }
  | { kind: 'detachDisk'; id: string; reason: string }
  | { kind: 'ensureExport'; id: string; vmi: VmiRef; disk: string; address: ListenAddress; why: string }
  | { kind: 'unexportDisk'; id: string; reason: string }
  | { kind: 'evictImage'; name: string; reason: string }
  /** Source failover (source-failover.ts, planned by the agent beside the reconciler): a paused hydration moves to another source. */
  | RetargetImageAction
  | { kind: 'reportOrphan'; object: 'disk' | 'controller'; name: string; firstSeen: number; collectAt: number }
  /** Something should go but may not yet (a safety rule holds it); retried every reconcile. */
  | { kind: 'reportBlocked'; object: 'disk' | 'controller' | 'image'; name: string; reason: string }
  | { kind: 'reportError'; target?: DiskTarget; vmi?: VmiRef; message: string };

export type ActionKind = Action['kind'];
export const REPORT_KINDS: ReadonlySet<ActionKind> = new Set(['reportReady', 'reportOrphan', 'reportBlocked', 'reportError']);
export const isReport = (a: Action): boolean => REPORT_KINDS.has(a.kind);
/** Actions that follow something running (hydration) rather than change the node: a round whose plan has only these and reports is converged. */
export const isFollowUp = (a: Action): boolean => a.kind === 'hydrateDisk';

export interface ReconcileConfig {
  socket: SocketPolicy;
  /** How long an orphan is left alone after it is first seen. */
  orphanGraceMs: number;
  cache: CacheLimits;
}

export interface AgentMemory {
  journal: Readonly<JournalState>;
  now: number;
  /** Disks (by disk key) and exports (by exportKey) that failed for good in this round, with the message. */
  failed: ReadonlyMap<string, string>;
  /** Sockets' owner and mode, by path; missing = not there. */
  sockets: ReadonlyMap<string, SocketStat>;
  /**
   * Exports the journal lists are made again (idempotent): after the backend (re)connected it
   * may be a new process that lost them.
   */
  recheckExports?: boolean;
}

/** The key of an export's outcome (beside the disk keys `<uid>/<disk>`). */
export const exportKey = (id: string): string => `export:${id}`;

export const orphanKey = (object: 'disk' | 'controller', name: string): string => `${object}:${name}`;

export const targetOf = (d: DesiredDisk): DiskTarget => ({ key: d.key, vmi: d.vmi, disk: d.name, slot: d.slot });

export function socketOk(st: SocketStat | undefined, p: SocketPolicy): boolean {
  return st !== undefined && st.uid === p.uid && st.gid === p.gid && st.mode === p.mode;
}

export function reconcile(desired: DesiredState, observed: ObservedState, memory: AgentMemory, config: ReconcileConfig): Action[] {
  const idx = indexDesired(desired);
  const deletesCtl: Action[] = [];
  const goingAway = new Set<string>();
  const unexporting = new Set<string>();
  const exported = memory.journal.exports;
  const ctx: SafetyContext = { observed, desired: idx, owned: memory.journal.owned, exported, goingAway, unexporting };
  const unexports: Action[] = [];
  const detaches: Action[] = [];
  const deletesDisk: Action[] = [];
  const ensureExports: Action[] = [];
  const chains: Action[] = [];
  const tail: Action[] = [];

  const disksById = new Map(observed.disks.map((d) => [d.id, d]));
  const ctlByName = new Map(observed.controllers.map((c) => [c.name, c]));
  const imagesByName = new Map(observed.images.map((i) => [i.name, i]));
  const ownedByCtl = new Map(Object.entries(memory.journal.owned).map(([id, o]) => [o.controller, { id, o }]));

  const deleteController = (c: ObservedController, reason: string, target?: DiskTarget): boolean => {
    if (goingAway.has(c.name)) return true;
    const why = whyNotDeleteController(ctx, c.name);
    if (why) {
      tail.push({ kind: 'reportBlocked', object: 'controller', name: c.name, reason: why });
      return false;
    }
    goingAway.add(c.name);
    deletesCtl.push({ kind: 'deleteController', name: c.name, diskRef: c.diskRef, reason, ...(target ? { target } : {}) });
    return true;
  };

  // Controllers and disks that no desired disk accounts for: deletions and orphans.
  for (const c of observed.controllers) {
    if (!isOurControllerName(c.name) || idx.controllers.has(c.name)) continue;
    const known = ownedByCtl.get(c.name);
    if (known) {
      if (idx.brokenUids.has(known.o.vmi.uid)) continue;
      deleteController(c, idx.presentUids.has(known.o.vmi.uid) ? 'no longer in the VMI\'s volumes or slot' : `VMI ${known.o.vmi.namespace}/${known.o.vmi.name} is gone`);
    } else {
      collectOrphan('controller', c.name, () => deleteController(c, 'orphan past its grace period'));
    }
  }

  function collectOrphan(object: 'disk' | 'controller', name: string, collect: () => void): void {
    const firstSeen = memory.journal.orphans[orphanKey(object, name)] ?? memory.now;
    const collectAt = firstSeen + config.orphanGraceMs;
    tail.push({ kind: 'reportOrphan', object, name, firstSeen, collectAt });
    if (memory.now >= collectAt) collect();
  }

  // One chain per desired disk (planned before disk deletions: a replaced controller frees its disk).
  for (const v of desired.vmis) {
    if (v.problems.length) {
      tail.push({ kind: 'reportError', vmi: v.ref, message: `${v.origin}: ${v.problems.join('; ')}` });
      continue;
    }
    for (const d of v.disks) chains.push(...planDisk(d));
  }
  // Prefetch: warm images that no disk of this plan imports already.
  const importing = new Set(chains.flatMap((a) => (a.kind === 'ensureImage' ? [a.image.name] : [])));
  for (const image of warmImports(desired.warm ?? [], desired.images, imagesByName, importing)) chains.push({ kind: 'warmImage', image });

  // Exports: what the journal lists and nothing wants goes; what is wanted and missing is made.
  for (const id of Object.keys(exported)) {
    if (idx.exports.has(id)) continue;
    unexporting.add(id);
    unexports.push({ kind: 'unexportDisk', id, reason: 'no longer exported' });
  }
  // An export a crashed run may have made without recording it (its intent is still pending).
  for (const op of Object.values(memory.journal.pending)) {
    if (op.action !== 'ensureExport' || idx.exports.has(op.target) || unexporting.has(op.target)) continue;
    unexporting.add(op.target);
    unexports.push({ kind: 'unexportDisk', id: op.target, reason: 'an interrupted export that is no longer wanted' });
  }
  for (const e of desired.exports) {
    if (exported[e.id] !== undefined && !memory.recheckExports) continue;
    const failed = memory.failed.get(exportKey(e.id));
    if (failed !== undefined) {
      tail.push({ kind: 'reportBlocked', object: 'disk', name: e.id, reason: `export (${e.why}) failed: ${failed}` });
      continue;
    }
    if (!disksById.has(e.id)) {
      tail.push({ kind: 'reportBlocked', object: 'disk', name: e.id, reason: `cannot export it (${e.why}): no such disk on this node` });
      continue;
    }
    ensureExports.push({ kind: 'ensureExport', id: e.id, vmi: e.vmi, disk: e.disk, address: e.address, why: e.why });
  }

  // Attached disks nothing serves from any more are detached (never deleted: the data is another node's).
  for (const [id, o] of Object.entries(memory.journal.owned)) {
    if (o.source !== 'attached' || idx.brokenUids.has(o.vmi.uid)) continue;
    if (idx.disksById.get(id)?.source.kind === 'attached') continue;
    const why = whyNotDetachDisk(ctx, id);
    if (why) tail.push({ kind: 'reportBlocked', object: 'disk', name: id, reason: why });
    else detaches.push({ kind: 'detachDisk', id, reason: idx.presentUids.has(o.vmi.uid) ? `no longer served from another node` : `VMI ${o.vmi.namespace}/${o.vmi.name} is gone` });
  }

  for (const d of observed.disks) {
    if (!d.owned || !isOurDiskId(d.id) || idx.disksById.has(d.id)) continue;
    const known = memory.journal.owned[d.id];
    const collect = (reason: string): void => {
      // Controllers serving it that are not already going away keep it (and are reported).
      const why = whyNotDeleteDisk(ctx, d.id);
      if (why) tail.push({ kind: 'reportBlocked', object: 'disk', name: d.id, reason: why });
      else deletesDisk.push({ kind: 'deleteDisk', id: d.id, reason });
    };
    if (known) {
      if (idx.brokenUids.has(known.vmi.uid)) continue;
      if (idx.presentUids.has(known.vmi.uid)) {
        tail.push({ kind: 'reportBlocked', object: 'disk', name: d.id, reason: `removed from VMI ${known.vmi.namespace}/${known.vmi.name}'s volumes; kept until the VMI is deleted` });
        continue;
      }
      collect(`VMI ${known.vmi.namespace}/${known.vmi.name} is gone`);
    } else {
      collectOrphan('disk', d.id, () => collect('orphan past its grace period'));
    }
  }

  function planDisk(d: DesiredDisk): Action[] {
    const target = targetOf(d);
    const failed = memory.failed.get(d.key);
    if (failed !== undefined) return [{ kind: 'reportError', target, message: failed }];
    if (d.problem !== undefined) return [{ kind: 'reportError', target, message: d.problem }];
    const out: Action[] = [];
    // A migrated disk that hydrated is whole without the image: the image is not fetched for it.
    const hydratedHere = memory.journal.owned[d.id]?.source === 'remote' && disksById.has(d.id);
    if (d.source.kind === 'image' && d.image && !hydratedHere) {
      const img = imagesByName.get(d.source.image);
      if (!img || img.phase === 'failed' || img.phase === 'importing') out.push({ kind: 'ensureImage', target, image: d.image });
      else {
        const tooSmall = capacityProblem(d.capacityBytes, d.imageName ?? d.source.image, img.sizeBytes);
        if (tooSmall) return [{ kind: 'reportError', target, message: `capacity: ${tooSmall}` }];
      }
    }
    const od = d.source.kind === 'attached' ? undefined : disksById.get(d.id);
    const ctl = ctlByName.get(d.controller);
    let diskRef = od?.ref;
    if (d.source.kind === 'remote') {
      // A disk of this id that is not this migration's clone is an earlier copy (A -> B -> A):
      // its data is stale, so it is never served in the clone's place.
      const known = memory.journal.owned[d.id];
      if (od && !(known?.source === 'remote' && known.migration === d.source.migration)) {
        return [{ kind: 'reportError', target, message: `disk ${d.id} on this node is an earlier copy, not the clone of node ${d.source.node}'s export; waiting for it to be deleted` }];
      }
      if (!od) out.push({ kind: 'cloneDisk', target, id: d.id, ref: d.source.ref, node: d.source.node, migration: d.source.migration });
    } else if (d.source.kind === 'attached') {
      // Its local ref is known from the attach (journaled): a controller on it means it is open.
      const known = memory.journal.owned[d.id];
      const ref = known?.source === 'attached' ? known.ref : undefined;
      if (ctl && ref !== undefined && ctl.diskRef === ref) diskRef = ref;
      else out.push({ kind: 'attachDisk', target, id: d.id, ref: d.source.ref, node: d.source.node });
    } else if (!od) {
      if (d.source.kind === 'bdev' && ctl?.diskRef === d.source.bdev) diskRef = d.source.bdev;
      else out.push({ kind: 'ensureDisk', target, spec: { id: d.id, source: d.source, ...(d.capacityBytes !== undefined ? { capacityBytes: d.capacityBytes } : {}) } });
    }
    const ctlSpec = { name: d.controller, readonly: d.readonly, queues: d.queues };
    // Hydration only after switchover (the source's QEMU no longer writes), once the clone is served.
    const hydrate: Action[] = d.source.kind === 'remote' && d.source.hydrate ? [{ kind: 'hydrateDisk', target, id: d.id, node: d.source.node }] : [];
    if (ctl && diskRef !== undefined && ctl.diskRef === diskRef && ctl.readonly === d.readonly) {
      const st = memory.sockets.get(ctl.socketPath);
      if (!socketOk(st, config.socket)) out.push({ kind: 'fixSocket', target, controller: ctl.name, path: ctl.socketPath, policy: config.socket });
      else if (out.length === 0) out.push({ kind: 'reportReady', target, socket: ctl.socketPath });
      return [...out, ...hydrate];
    }
    if (ctl) {
      // Our name, but serving the wrong bdev or with the wrong flags: replace it, unless a guest is on it.
      if (ctl.sessions > 0) {
        return [{ kind: 'reportError', target, message: `controller ${ctl.name} serves ${ctl.diskRef} (readonly=${ctl.readonly}) with ${ctl.sessions} active session(s); not replacing it under a running guest` }];
      }
      if (!deleteController(ctl, `serves ${ctl.diskRef}, wanted ${diskRef ?? d.id}`, target)) {
        return [{ kind: 'reportError', target, message: `controller ${ctl.name} serves ${ctl.diskRef} and cannot be replaced yet` }];
      }
    }
    if (diskRef !== undefined) {
      for (const other of observed.controllers) {
        if (other.diskRef !== diskRef || other.name === d.controller || goingAway.has(other.name)) continue;
        // Another controller on this bdev that nothing wants (an old slot) goes first.
        if (!idx.controllers.has(other.name) && other.sessions === 0) deleteController(other, `bdev ${diskRef} moves to ${d.controller}`);
      }
      const why = whyNotCreateController(ctx, d.controller, diskRef);
      if (why) return [...out.filter((a) => a.kind === 'ensureImage'), { kind: 'reportError', target, message: why }];
    }
    out.push({ kind: 'ensureController', target, spec: { ...ctlSpec, ...(diskRef !== undefined ? { diskRef } : {}) } });
    out.push({ kind: 'fixSocket', target, controller: d.controller, policy: config.socket });
    return [...out, ...hydrate];
  }

  // Image cache: evict LRU under the limits; never an image with clones, in import or needed.
  const entries: CacheEntry[] = observed.images.map((img) => ({
    name: img.name,
    sizeBytes: img.sizeBytes,
    cloneCount: img.cloneCount,
    lastUse: memory.journal.imageLastUse[img.name] ?? 0,
    pinned: importInProgress(img) || idx.imagesNeeded.has(img.name) || idx.imagesServed.has(img.name),
    inCatalog: desired.images.some((i) => i.name === img.name),
  }));
  for (const name of idx.imagesNeeded) {
    const spec = desired.images.find((i) => i.name === name);
    if (!imagesByName.has(name) && spec) entries.push({ name, sizeBytes: spec.sizeBytes ?? 0, cloneCount: 0, lastUse: memory.now, pinned: true, inCatalog: true });
  }
  const evictions: Action[] = [];
  for (const name of chooseEvictions(entries, config.cache)) {
    const why = whyNotEvictImage(ctx, name);
    if (why) tail.push({ kind: 'reportBlocked', object: 'image', name, reason: why });
    else evictions.push({ kind: 'evictImage', name, reason: desired.images.some((i) => i.name === name) ? 'least recently used over the cache limits' : 'no longer in the catalog' });
  }

  return [...deletesCtl, ...unexports, ...detaches, ...deletesDisk, ...chains, ...ensureExports, ...evictions, ...tail];
}
