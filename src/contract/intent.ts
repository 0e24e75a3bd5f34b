import { formatBytes } from '../api/quantity.js';
import type { SpdkVhostBlkDisk } from '../api/volumes.js';
import type { RemoteDiskRef } from '../backend/remote.js';

/**
 * The disk intent, defined once: what one `spdkVhostBlkDisk` volume asks of a node, from which
 * the webhook, the converter, the agent and migration all derive their part.
 */

/** virtio-blk's queue limit in QEMU and SPDK. */
export const MAX_QUEUES = 256;

/**
 * Where a disk's data comes from. `image`, `blank` and `bdev` are what a user declares;
 * `attached` is a disk another node exports (a migration target serves the source's disk
 * until it owns a copy): never created or deleted here, only attached and detached. The agent
 * decides the source of each desired disk from the node view; a source that hydrates from
 * another node (lazy images, data-moving migration) is one more kind here, planned by the
 * reconciler like the others.
 *
 * `remote` is a migrating disk on its target: a local copy-on-write clone of the source node's
 * export (writes stay here, unread blocks are read from node X). Before switchover nothing is
 * copied (`hydrate: false`: the source QEMU still writes); after it the clone hydrates until it
 * stands alone, and the disk's source becomes the declared one again. `migration` names the
 * migration the clone belongs to, so that an earlier copy of the same disk id is never taken
 * for it.
 */
export type DiskSource =
  | { kind: 'image'; image: string }
  | { kind: 'blank' }
  | { kind: 'bdev'; bdev: string }
  | { kind: 'attached'; ref: RemoteDiskRef; node: string }
  | { kind: 'remote'; ref: RemoteDiskRef; node: string; migration: string; hydrate: boolean };

/** A disk served from another node's export: the ref to attach and the node the data lives on. */
export type AttachedSource = Extract<DiskSource, { kind: 'attached' }>;

/** A migrating disk cloned lazily from another node's export (see DiskSource). */
export type RemoteCloneSource = Extract<DiskSource, { kind: 'remote' }>;

/** A disk whose data (some or all of it) is on another node now. */
export const fromOtherNode = (s: DiskSource): s is AttachedSource | RemoteCloneSource => s.kind === 'attached' || s.kind === 'remote';

/** The declared source of a volume (never `attached` or `remote`: those only the agent decides). */
export function declaredSource(d: SpdkVhostBlkDisk): Extract<DiskSource, { kind: 'image' | 'blank' | 'bdev' }> {
  if (d.image !== undefined) return { kind: 'image', image: d.image };
  if (d.bdev !== undefined) return { kind: 'bdev', bdev: d.bdev };
  return { kind: 'blank' };
}

/** Virtqueues of a disk: as declared, else one per vCPU, never beyond MAX_QUEUES. */
export function queuesOf(declared: number | undefined, vcpus: number): number {
  return Math.min(declared ?? vcpus, MAX_QUEUES);
}

/**
 * The capacity rule: an image disk is at least as large as its image. "1Gi is smaller than
 * image fedora-40 (4Gi)", or undefined when the capacity fits (or a size is not known yet).
 */
export function capacityProblem(capacityBytes: number | undefined, image: string, imageBytes: number | undefined, capacityText?: string): string | undefined {
  if (imageBytes === undefined || capacityBytes === undefined || capacityBytes >= imageBytes) return undefined;
  return `${capacityText ?? formatBytes(capacityBytes)} is smaller than image ${image} (${formatBytes(imageBytes)})`;
}
