import type { ObservedController, ObservedDisk, ObservedImage, ObservedState } from '../backend/types.js';
import type { DesiredDisk, DesiredExport, DesiredState } from './desired.js';
import { importInProgress } from './image-cache.js';
import type { JournalState, OwnedDisk } from './journal.js';

/**
 * The safety rules SPDK does not enforce (it lets two controllers share a bdev and deletes an
 * lvol under a running guest). The reconciler plans with these predicates and the executor
 * asks them again right before each call, against a fresh observation: each returns why the
 * operation must not happen, or undefined when it is safe.
 */

/** What the desired state protects, indexed. */
export interface DesiredIndex {
  /** Every VMI that exists, valid or not: their disks are never deleted. */
  presentUids: Set<string>;
  /** VMIs that exist but whose input is broken: nothing of theirs is touched. */
  brokenUids: Set<string>;
  /** Disks of every existing VMI (including disks with input problems), by backend id. */
  disksById: Map<string, DesiredDisk>;
  /** Controllers of every existing VMI, by name. */
  controllers: Map<string, DesiredDisk>;
  /** Images that some desired disk clones from. */
  imagesNeeded: Set<string>;
  /** Disks exported to other nodes, by backend id: kept while exported. */
  exports: Map<string, DesiredExport>;
  /** Goldens other nodes hydrate from (their NodeImageCache names this node): kept meanwhile. */
  imagesServed: Set<string>;
}

export function indexDesired(desired: DesiredState): DesiredIndex {
  const idx: DesiredIndex = {
    presentUids: new Set(),
    brokenUids: new Set(),
    disksById: new Map(),
    controllers: new Map(),
    imagesNeeded: new Set(),
    exports: new Map(desired.exports.map((e) => [e.id, e])),
    imagesServed: new Set(desired.servedToPeers ?? []),
  };
  for (const v of desired.vmis) {
    idx.presentUids.add(v.ref.uid);
    if (v.problems.length) idx.brokenUids.add(v.ref.uid);
    for (const d of v.disks) {
      idx.disksById.set(d.id, d);
      idx.controllers.set(d.controller, d);
      if (d.source.kind === 'image') idx.imagesNeeded.add(d.source.image);
    }
  }
  // Prefetch: a warm image is held like one a disk clones from (never evicted).
  for (const name of desired.warm ?? []) idx.imagesNeeded.add(name);
  return idx;
}

export interface SafetyContext {
  observed: ObservedState;
  desired: DesiredIndex;
  owned: Readonly<Record<string, OwnedDisk>>;
  /** What this node exports now (the journal's record of it). */
  exported: Readonly<JournalState['exports']>;
  /** Controllers about to be deleted earlier in the same plan (reconciler only). */
  goingAway?: ReadonlySet<string>;
  /** Exports about to be deleted earlier in the same plan (reconciler only). */
  unexporting?: ReadonlySet<string>;
}

const servedBy = (obs: ObservedState, ref: string): ObservedController[] => obs.controllers.filter((c) => c.diskRef === ref);

export function whyNotDeleteController(ctx: SafetyContext, name: string): string | undefined {
  const c = ctx.observed.controllers.find((x) => x.name === name);
  if (!c) return undefined; // already gone: deleting is a no-op
  if (c.sessions > 0) return `controller ${name} has ${c.sessions} active vhost session(s)`;
  const want = ctx.desired.controllers.get(name);
  if (want) {
    // A desired name serving the wrong bdev (say, a previous VMI's disk on a reused slot) may be replaced.
    const wantRef = ctx.observed.disks.find((d) => d.id === want.id)?.ref ?? (want.source.kind === 'bdev' ? want.source.bdev : undefined);
    if (wantRef !== undefined && wantRef === c.diskRef) return `controller ${name} is still wanted by VMI ${want.vmi.namespace}/${want.vmi.name}`;
  }
  return undefined;
}

export function whyNotDeleteDisk(ctx: SafetyContext, id: string): string | undefined {
  const d: ObservedDisk | undefined = ctx.observed.disks.find((x) => x.id === id);
  if (!d) return undefined;
  if (!d.owned) return `disk ${id} is not ours to delete (bdev volume)`;
  const serving = servedBy(ctx.observed, d.ref).filter((c) => !ctx.goingAway?.has(c.name));
  if (serving.length) return `disk ${id} is served by controller ${serving.map((c) => c.name).join(', ')}`;
  if (d.dependents > 0) return `disk ${id} has ${d.dependents} clone(s)/snapshot(s) depending on it`;
  const want = ctx.desired.disksById.get(id);
  if (want) return `disk ${id} belongs to VMI ${want.vmi.namespace}/${want.vmi.name}, which still exists`;
  const owner = ctx.owned[id];
  if (owner && ctx.desired.presentUids.has(owner.vmi.uid)) return `disk ${id} belongs to VMI ${owner.vmi.namespace}/${owner.vmi.name}, which still exists`;
  const exp = ctx.desired.exports.get(id);
  if (exp) return `disk ${id} is exported (${exp.why})`;
  if (ctx.exported[id] !== undefined && !ctx.unexporting?.has(id)) return `disk ${id} is still exported`;
  return undefined;
}

export function whyNotEvictImage(ctx: SafetyContext, name: string, importingHere = false): string | undefined {
  const img: ObservedImage | undefined = ctx.observed.images.find((x) => x.name === name);
  if (!img) return undefined;
  if (img.cloneCount > 0) return `image ${name} has ${img.cloneCount} clone(s)`;
  if (importingHere || importInProgress(img)) return `image ${name} is being imported`;
  if (ctx.desired.imagesNeeded.has(name)) return `image ${name} is needed by a desired disk`;
  if (ctx.desired.imagesServed.has(name)) return `image ${name} is the hydration source of another node`;
  return undefined;
}

/** An attached remote disk is closed only when no controller serves it and no desired disk is served from it. */
export function whyNotDetachDisk(ctx: SafetyContext, id: string): string | undefined {
  const want = ctx.desired.disksById.get(id);
  if (want?.source.kind === 'attached') return `disk ${id} is still served to VMI ${want.vmi.namespace}/${want.vmi.name} from node ${want.source.node}`;
  const ref = ctx.owned[id]?.ref;
  const serving = ref === undefined ? [] : servedBy(ctx.observed, ref).filter((c) => !ctx.goingAway?.has(c.name));
  if (serving.length) return `remote disk ${id} is served by controller ${serving.map((c) => c.name).join(', ')}`;
  return undefined;
}

/** One controller per bdev, and never two objects under one controller name. */
export function whyNotCreateController(ctx: SafetyContext, name: string, diskRef: string): string | undefined {
  const same = ctx.observed.controllers.find((c) => c.name === name);
  if (same && same.diskRef !== diskRef && !ctx.goingAway?.has(name)) return `controller ${name} already exists and serves ${same.diskRef}`;
  const other = servedBy(ctx.observed, diskRef).filter((c) => c.name !== name && !ctx.goingAway?.has(c.name));
  if (other.length) return `bdev ${diskRef} is already served by controller ${other.map((c) => c.name).join(', ')} (one controller per bdev)`;
  return undefined;
}
