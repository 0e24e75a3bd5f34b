import type { CachedImage } from '../api/cachedimage.js';
import { ValidationError } from '../api/errors.js';
import { formatBytes } from '../api/quantity.js';
import type { VmiRef } from '../api/status.js';
import { slotOf, spdkVolumesOf, vcpuCount, vmiUid, type Vmi } from '../api/vmi.js';
import { diskSource, type DiskSource } from '../api/volumes.js';
import type { ImageSpec } from '../backend/types.js';
import { controllerName, diskId, diskKey } from './naming.js';

/** One disk the node should serve, fully resolved from its VMI and the image catalog. */
export interface DesiredDisk {
  /** `<vmi uid>/<disk>` */
  key: string;
  vmi: VmiRef;
  /** The disk (volume) name. */
  name: string;
  /** Backend disk id, from naming.diskId. */
  id: string;
  slot: string;
  /** `<slot>/<disk>` */
  controller: string;
  source: DiskSource;
  capacityBytes?: number;
  readonly: boolean;
  queues: number;
  /** The catalog entry of an image disk. */
  image?: ImageSpec;
  /** Bad input for this disk alone: it is reported Failed, the other disks go on. */
  problem?: string;
}

export interface DesiredVmi {
  ref: VmiRef;
  /** Where it came from (a file name in standalone mode), for messages. */
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
  /** The CachedImage catalog. */
  images: ImageSpec[];
  /** Problems that belong to no VMI (unreadable file, bad catalog), for logs and `--once`. */
  problems: string[];
}

export const emptyDesired = (): DesiredState => ({ vmis: [], images: [], problems: [] });

export function imageSpecOf(img: CachedImage): ImageSpec {
  return { name: img.metadata.name, source: img.spec.source, format: img.spec.format, sizeBytes: img.spec.size };
}

export function vmiRefOf(vmi: Vmi): VmiRef {
  return { namespace: vmi.metadata.namespace, name: vmi.metadata.name, uid: vmiUid(vmi) };
}

const problemsOf = (e: unknown): string[] => (e instanceof ValidationError ? e.problems : [String(e)]);

/** Resolves one VMI against the catalog. Never throws: input errors become `problems`. */
export function desiredVmiOf(vmi: Vmi, catalog: ReadonlyMap<string, ImageSpec>, origin: string): DesiredVmi {
  const ref = vmiRefOf(vmi);
  const out: DesiredVmi = { ref, origin, disks: [], problems: [] };
  let slot: string | undefined;
  try {
    slot = slotOf(vmi);
  } catch (e) {
    out.problems.push(...problemsOf(e));
  }
  let volumes;
  try {
    volumes = spdkVolumesOf(vmi);
  } catch (e) {
    out.problems.push(...problemsOf(e));
    return out;
  }
  if (slot === undefined) {
    if (out.problems.length === 0 && volumes.length > 0) out.problems.push('metadata.annotations["kubevirt-spdk.io/slot"]: is required (no vhost slot assigned)');
    return out;
  }
  out.slot = slot;
  const vcpus = vcpuCount(vmi);
  volumes.forEach((vol, i) => {
    const d = vol.spdkVhostBlkDisk;
    const source = diskSource(d);
    const disk: DesiredDisk = {
      key: diskKey(ref.uid, vol.name),
      vmi: ref,
      name: vol.name,
      id: diskId(ref.uid, vol.name),
      slot,
      controller: controllerName(slot, vol.name),
      source,
      capacityBytes: d.capacity?.bytes,
      readonly: d.readonly,
      queues: Math.min(d.queues ?? vcpus, 256),
    };
    if (source.kind === 'image') {
      const image = catalog.get(source.image);
      if (!image) disk.problem = `volumes[${i}].spdkVhostBlkDisk.image: CachedImage "${source.image}" does not exist`;
      else {
        disk.image = image;
        const tooSmall = capacityProblem(disk, image.sizeBytes);
        if (tooSmall) disk.problem = `volumes[${i}].spdkVhostBlkDisk.capacity: ${tooSmall}`;
      }
    }
    out.disks.push(disk);
  });
  return out;
}

/** "1Gi is smaller than image fedora-40 (4Gi)", or undefined when the capacity fits. */
export function capacityProblem(disk: Pick<DesiredDisk, 'capacityBytes' | 'source'>, imageBytes: number | undefined): string | undefined {
  if (disk.source.kind !== 'image' || imageBytes === undefined || disk.capacityBytes === undefined) return undefined;
  if (disk.capacityBytes >= imageBytes) return undefined;
  return `${formatBytes(disk.capacityBytes)} is smaller than image ${disk.source.image} (${formatBytes(imageBytes)})`;
}

export interface VmiInput {
  origin: string;
  vmi: Vmi;
  /** Problems found before resolving (e.g. the file no longer parses; `vmi` is its last good or partial form). */
  problems?: string[];
}

/**
 * The node's desired state from its VMIs and the catalog. Conflicts between VMIs (two on one
 * slot, two disks on one `bdev:`) are resolved in favour of the incumbent (the VMI the
 * journal last saw on that slot), else the first by namespace/name, so a running VM never
 * loses its disks to a newcomer.
 */
export function buildDesired(
  inputs: VmiInput[],
  images: ImageSpec[],
  opts: { problems?: string[]; slotHolder?: (slot: string) => string | undefined } = {},
): DesiredState {
  const catalog = new Map(images.map((i) => [i.name, i]));
  const vmis = inputs
    .map((i) => {
      const v = desiredVmiOf(i.vmi, catalog, i.origin);
      if (i.problems?.length) {
        v.problems.unshift(...i.problems);
        v.disks = [];
      }
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
  return { vmis, images, problems: opts.problems ?? [] };
}
