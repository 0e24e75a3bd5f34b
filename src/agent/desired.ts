import type { CachedImage } from '../api/cachedimage.js';
import { ValidationError } from '../api/errors.js';
import type { VmiRef } from '../api/status.js';
import { spdkVolumesOf, vcpuCount, vmiUid, type Vmi } from '../api/vmi.js';
import type { ListenAddress } from '../backend/remote.js';
import type { ImageSpec } from '../backend/types.js';
import { capacityProblem, controllerName, declaredSource, diskId, diskKey, fromOtherNode, imageKey, queuesOf, type AttachedSource, type DiskSource } from '../contract/index.js';

/**
 * The agent's input and its resolution. Every mode (standalone files, cluster informers,
 * migration) feeds the agent one typed NodeView: the VMIs with the slot they hold here and,
 * for a migration target, the disks it serves from another node; the disks this node exports.
 * `buildDesired` resolves it against the catalog into the DesiredState the reconciler plans from.
 */

/**
 * A disk another node exports, served here instead of a local disk (a migration target's):
 * attached as it is, or (`lazy`) as a local clone that hydrates once `lazy.hydrate` says so.
 */
export type AttachedDisk = Omit<AttachedSource, 'kind'> & { lazy?: { migration: string; hydrate: boolean } };

/** One VMI as this node sees it. */
export interface ViewVmi {
  /** Where it came from (a file name in standalone mode), for messages. */
  origin: string;
  vmi: Vmi;
  /** The vhost slot it holds on this node (device plugin allocation; standalone: its slot annotation). */
  slot?: string;
  /** Problems found before resolving (e.g. the file no longer parses; `vmi` is its last good or partial form). */
  problems?: string[];
  /** Disks served from another node, by disk (volume) name: their source is `attached`. */
  attached?: Readonly<Record<string, AttachedDisk>>;
}

/** A disk this node serves to another node (a migration source's export). Keeps its disk. */
export interface DesiredExport {
  /** Backend disk id. */
  id: string;
  vmi: VmiRef;
  disk: string;
  address: ListenAddress;
  /** Why it is exported (logs, status). */
  why: string;
}

export interface NodeView {
  vmis: ViewVmi[];
  /** The CachedImage catalog: `name` is the CachedImage name (buildDesired keys them by content). */
  images: ImageSpec[];
  /** Content keys of goldens other nodes hydrate from this node now: kept and exported until they are done. */
  servedToPeers?: string[];
  exports?: DesiredExport[];
  /** Problems that belong to no VMI (unreadable file, bad catalog). */
  problems?: string[];
}

/** One disk the node should serve, fully resolved from its VMI and the image catalog. */
export interface DesiredDisk {
  /** `<vmi uid>/<disk>` */
  key: string;
  vmi: VmiRef;
  /** The disk (volume) name. */
  name: string;
  /** Backend disk id (contract diskId). */
  id: string;
  slot: string;
  /** `<slot>/<disk>` */
  controller: string;
  /** An image disk's `image` is the content key of its golden (contract imageKey). */
  source: DiskSource;
  capacityBytes?: number;
  readonly: boolean;
  queues: number;
  /** The catalog entry of an image disk, named by its content key. */
  image?: ImageSpec;
  /** The CachedImage an image disk names (messages and status speak CachedImage names). */
  imageName?: string;
  /** Bad input for this disk alone: it is reported Failed, the other disks go on. */
  problem?: string;
}

export interface DesiredVmi {
  ref: VmiRef;
  origin: string;
  slot?: string;
  disks: DesiredDisk[];
  /**
   * Input errors of the whole VMI (bad annotation, no slot). Its disks are not provisioned,
   * but nothing it already has is deleted: the VMI still exists.
   */
  problems: string[];
}

export interface DesiredState {
  vmis: DesiredVmi[];
  /** The catalog by content key: one entry per golden, however many CachedImages name it. */
  images: ImageSpec[];
  /** Content key -> the CachedImage names of that content (status speaks CachedImage names). */
  imageNames?: Record<string, string[]>;
  /** Content keys other nodes hydrate from this node: never evicted nor unexported meanwhile. */
  servedToPeers?: string[];
  /** Disks exported to other nodes: each keeps its disk until it is no longer desired. */
  exports: DesiredExport[];
  problems: string[];
  /** Images this node warms before any disk needs them (prefetch, agent/warm.ts): imported and never evicted. */
  warm?: string[];
}

export const emptyDesired = (): DesiredState => ({ vmis: [], images: [], exports: [], problems: [] });

/** The problem of a VMI that holds no slot here yet (not worth an Event while its pod starts). */
export const NO_SLOT_PROBLEM = 'metadata.annotations["kubevirt-spdk.io/slot"]: is required (no vhost slot assigned)';

export function imageSpecOf(img: CachedImage): ImageSpec {
  return { name: img.metadata.name, source: img.spec.source, format: img.spec.format, sizeBytes: img.spec.size };
}

export function vmiRefOf(vmi: Vmi): VmiRef {
  return { namespace: vmi.metadata.namespace, name: vmi.metadata.name, uid: vmiUid(vmi) };
}

const problemsOf = (e: unknown): string[] => (e instanceof ValidationError ? e.problems : [String(e)]);

/** Resolves one VMI against the catalog. Never throws: input errors become `problems`. */
export function desiredVmiOf(input: ViewVmi, catalog: ReadonlyMap<string, ImageSpec>): DesiredVmi {
  const { vmi, slot, origin } = input;
  const ref = vmiRefOf(vmi);
  const out: DesiredVmi = { ref, origin, disks: [], problems: [...(input.problems ?? [])] };
  let volumes;
  try {
    volumes = spdkVolumesOf(vmi);
  } catch (e) {
    out.problems.push(...problemsOf(e));
    return out;
  }
  if (slot === undefined) {
    if (out.problems.length === 0 && volumes.length > 0) out.problems.push(NO_SLOT_PROBLEM);
    return out;
  }
  out.slot = slot;
  const vcpus = vcpuCount(vmi);
  volumes.forEach((vol, i) => {
    const d = vol.spdkVhostBlkDisk;
    const declared = declaredSource(d);
    const remote = declared.kind === 'bdev' ? undefined : input.attached?.[vol.name];
    const named = declared.kind === 'image' ? catalog.get(declared.image) : undefined;
    const keyed: DiskSource = declared.kind === 'image' && named ? { kind: 'image', image: imageKey(named) } : declared;
    const source: DiskSource = !remote
      ? keyed
      : remote.lazy
        ? { kind: 'remote', ref: remote.ref, node: remote.node, migration: remote.lazy.migration, hydrate: remote.lazy.hydrate }
        : { kind: 'attached', ref: remote.ref, node: remote.node };
    const disk: DesiredDisk = {
      key: diskKey(ref.uid, vol.name),
      vmi: ref,
      name: vol.name,
      id: diskId(ref.uid, vol.name),
      slot,
      controller: controllerName(slot, vol.name),
      source,
      ...(fromOtherNode(source) || d.capacity === undefined ? {} : { capacityBytes: d.capacity.bytes }),
      readonly: d.readonly,
      queues: queuesOf(d.queues, vcpus),
    };
    if (source.kind === 'image' && declared.kind === 'image') {
      disk.imageName = declared.image;
      if (!named) disk.problem = `volumes[${i}].spdkVhostBlkDisk.image: CachedImage "${declared.image}" does not exist`;
      else {
        disk.image = { ...named, name: source.image };
        const tooSmall = capacityProblem(disk.capacityBytes, declared.image, named.sizeBytes);
        if (tooSmall) disk.problem = `volumes[${i}].spdkVhostBlkDisk.capacity: ${tooSmall}`;
      }
    }
    out.disks.push(disk);
  });
  return out;
}

/**
 * The node's desired state from its view and the catalog. Conflicts between VMIs (two on one
 * slot, two disks on one `bdev:`) are resolved in favour of the incumbent (the VMI the
 * journal last saw on that slot), else the first by namespace/name, so a running VM never
 * loses its disks to a newcomer.
 */
export function buildDesired(view: NodeView, opts: { slotHolder?: (slot: string) => string | undefined } = {}): DesiredState {
  const catalog = new Map(view.images.map((i) => [i.name, i]));
  const vmis = view.vmis
    .map((i) => {
      const v = desiredVmiOf(i, catalog);
      if (i.problems?.length) v.disks = [];
      return v;
    })
    .sort((a, b) => `${a.ref.namespace}/${a.ref.name}`.localeCompare(`${b.ref.namespace}/${b.ref.name}`));
  const seenUid = new Map<string, DesiredVmi>();
  for (const v of vmis) {
    const first = seenUid.get(v.ref.uid);
    if (first) {
      v.problems.push(`metadata.uid: ${v.ref.uid} is already used by ${first.origin}`);
      v.disks = [];
    } else seenUid.set(v.ref.uid, v);
  }
  const bySlot = new Map<string, DesiredVmi[]>();
  for (const v of vmis) if (v.slot && v.problems.length === 0) bySlot.set(v.slot, [...(bySlot.get(v.slot) ?? []), v]);
  for (const [slot, holders] of bySlot) {
    if (holders.length < 2) continue;
    const incumbent = opts.slotHolder?.(slot);
    const winner = holders.find((h) => h.ref.uid === incumbent) ?? holders[0];
    for (const h of holders) {
      if (h === winner || !winner) continue;
      h.problems.push(`metadata.annotations["kubevirt-spdk.io/slot"]: ${slot} is already held by VMI ${winner.ref.namespace}/${winner.ref.name}`);
      h.disks = [];
    }
  }
  const bdevUser = new Map<string, DesiredDisk>();
  for (const v of vmis) {
    for (const d of v.disks) {
      if (d.source.kind !== 'bdev') continue;
      const first = bdevUser.get(d.source.bdev);
      if (first) d.problem ??= `bdev ${d.source.bdev} is already served to disk ${first.name} of VMI ${first.vmi.namespace}/${first.vmi.name} (one controller per bdev)`;
      else bdevUser.set(d.source.bdev, d);
    }
  }
  const { images, imageNames } = keyedCatalog(view.images);
  return { vmis, images, imageNames, exports: view.exports ?? [], problems: view.problems ?? [], ...(view.servedToPeers?.length ? { servedToPeers: [...view.servedToPeers].sort() } : {}) };
}

/**
 * The catalog by content key: CachedImages of one content share one entry, and each key
 * remembers the CachedImage names it stands for. The entry's source is a file on the node when
 * one has these bytes (no download, and a crawling or dead URL of the same content cannot hold
 * the golden up), else the first by name, which also decides the declared size.
 */
const localFirst = (a: ImageSpec, b: ImageSpec): number => Number('http' in a.source) - Number('http' in b.source) || a.name.localeCompare(b.name);

export function keyedCatalog(catalog: readonly ImageSpec[]): { images: ImageSpec[]; imageNames: Record<string, string[]> } {
  const byKey = new Map<string, ImageSpec>();
  const imageNames: Record<string, string[]> = {};
  for (const spec of [...catalog].sort(localFirst)) {
    const key = imageKey(spec);
    (imageNames[key] ??= []).push(spec.name);
    if (!byKey.has(key)) byKey.set(key, { ...spec, name: key });
  }
  for (const names of Object.values(imageNames)) names.sort();
  return { images: [...byKey.values()], imageNames };
}
