import { parseControllerName } from '../../contract/layout.js';
import { BackendError } from '../types.js';

export { parseControllerName };

/**
 * How the spdk backend names what it makes in SPDK, and how it recognises them again when it
 * lists SPDK's state (it keeps no other record: SPDK's listing is the truth).
 *
 * In the lvstore:
 * - `img-<image>`            golden image: a read-only snapshot, made in one step by
 *                            `bdev_lvol_snapshot` of a fully inflated lvol, so an lvol with
 *                            this name is always complete.
 * - `img-<image>-importing`  an import in progress (esnap clone of the aio bdev, being
 *                            inflated). Never cloned from; a left-over one is deleted and the
 *                            import redone.
 * - `img-<image>.f<N>`       a fan-out of the golden: a read-only snapshot with no data of
 *                            its own whose parent is the golden. Clones of one snapshot must
 *                            run one at a time (real SPDK answers busy otherwise), so disks
 *                            are cloned from the golden and its fan-outs in parallel lanes.
 *                            `img-<image>.f<N>.tmp` is the clone a fan-out is made from.
 *                            (Image names are DNS labels: they never contain a `.`.)
 * - `img-<image>.lazy`       a lazy golden: a read-only external-snapshot clone of a peer's
 *                            export (the NVMe bdev `lzi-<image>n1`); disks clone it and boot at
 *                            once. (`img-<image>.lazybase`: reserved, a left-over is deleted.)
 *                            `img-<image>.hyd` is the clone hydration inflates
 *                            (read by nobody else, then snapshotted as `img-<image>`). Once the
 *                            golden exists the lazy golden is repointed onto it (set_parent) and
 *                            is then an empty snapshot between the golden and its disks.
 * - `<disk>.hyd`, `<disk>.hsnap`  a disk's hydration helper (the esnap clone being inflated)
 *                            and the local snapshot the disk is repointed onto; reserved suffixes.
 * - anything else            a disk (`DiskSpec.id`).
 * Outside the lvstore: `img-<image>-src`, the aio bdev over the downloaded file; NVMe bdev
 * controllers `lzi-<image>` (a peer's golden) and `lzd-<disk>` (another node's disk);
 * `kspdk-instance-<id>`, a one-block malloc bdev naming the spdk_tgt process (instance.ts).
 */

export const IMAGE_PREFIX = 'img-';
export const IMPORTING_SUFFIX = '-importing';
export const SOURCE_SUFFIX = '-src';
/** SPDK_LVOL_NAME_MAX is 64 bytes including the terminating NUL. */
export const LVOL_NAME_MAX = 63;
/** The longest image name whose in-progress lvol name still fits LVOL_NAME_MAX. */
export const IMAGE_NAME_MAX = LVOL_NAME_MAX - IMAGE_PREFIX.length - IMPORTING_SUFFIX.length;

const LVOL_NAME_RE = /^[A-Za-z0-9_.-]+$/;
const IMAGE_NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

export const goldenName = (image: string): string => `${IMAGE_PREFIX}${image}`;
export const importingName = (image: string): string => `${IMAGE_PREFIX}${image}${IMPORTING_SUFFIX}`;
export const sourceBdevName = (image: string): string => `${IMAGE_PREFIX}${image}${SOURCE_SUFFIX}`;
export const lvolAlias = (lvs: string, lvol: string): string => `${lvs}/${lvol}`;
export const fanoutName = (image: string, n: number): string => `${IMAGE_PREFIX}${image}.f${n}`;
export const fanoutTmpName = (image: string, n: number): string => `${fanoutName(image, n)}.tmp`;
const FANOUT_RE = /^(.+)\.f(\d+)(\.tmp)?$/;
export const lazyGoldenName = (image: string): string => `${IMAGE_PREFIX}${image}.lazy`;
export const lazyBaseName = (image: string): string => `${IMAGE_PREFIX}${image}.lazybase`;
export const lazyHydrateName = (image: string): string => `${IMAGE_PREFIX}${image}.hyd`;
const LAZY_RE = /^(.+)\.(lazy|lazybase|hyd)$/;
export const diskHydrateName = (id: string): string => `${id}.hyd`;
export const diskBaseName = (id: string): string => `${id}.hsnap`;
const DISK_HELPER_RE = /^(.+)\.(hyd|hsnap)$/;
/** NVMe bdev controller of a peer's golden; its namespace 1 is the bdev `<name>n1`. */
export const peerControllerName = (image: string): string => `lzi-${image}`;
/** NVMe bdev controller of another node's disk that a local disk is a lazy clone of. */
export const diskSourceControllerName = (id: string): string => `lzd-${id}`;
export const nvmeBdevOf = (controller: string): string => `${controller}n1`;
/** Marker bdev of the spdk_tgt process; the rest of its name is the instance id. */
export const INSTANCE_BDEV_PREFIX = 'kspdk-instance-';
export const instanceBdevName = (id: string): string => `${INSTANCE_BDEV_PREFIX}${id}`;
export const isInstanceBdev = (name: string): boolean => name.startsWith(INSTANCE_BDEV_PREFIX);

export type LvolRole =
  | { role: 'golden'; image: string }
  | { role: 'importing'; image: string }
  | { role: 'fanout'; image: string; index: number; tmp: boolean }
  | { role: 'lazy'; image: string; part: 'lazy' | 'lazybase' | 'hyd' }
  | { role: 'diskHelper'; id: string; part: 'hyd' | 'hsnap' }
  | { role: 'disk'; id: string };

/** The image whose cached copy an lvol is part of (golden or fan-out), if any. */
export function imageOfSnapshot(name: string): string | undefined {
  const r = classifyLvol(name);
  return r.role === 'golden' || (r.role === 'fanout' && !r.tmp) || (r.role === 'lazy' && r.part === 'lazy') ? r.image : undefined;
}

/** What an lvol of our lvstore is, from its name alone. */
export function classifyLvol(name: string): LvolRole {
  if (!name.startsWith(IMAGE_PREFIX)) {
    const helper = DISK_HELPER_RE.exec(name);
    if (helper?.[1] !== undefined) return { role: 'diskHelper', id: helper[1], part: helper[2] === 'hyd' ? 'hyd' : 'hsnap' };
    return { role: 'disk', id: name };
  }
  const rest = name.slice(IMAGE_PREFIX.length);
  const lazy = LAZY_RE.exec(rest);
  if (lazy?.[1] !== undefined && lazy[2] !== undefined) return { role: 'lazy', image: lazy[1], part: lazy[2] as 'lazy' | 'lazybase' | 'hyd' };
  if (rest.endsWith(IMPORTING_SUFFIX)) return { role: 'importing', image: rest.slice(0, -IMPORTING_SUFFIX.length) };
  const fan = FANOUT_RE.exec(rest);
  if (fan?.[1] !== undefined && fan[2] !== undefined) return { role: 'fanout', image: fan[1], index: Number(fan[2]), tmp: fan[3] !== undefined };
  return { role: 'golden', image: rest };
}

/** The image name of an aio source bdev we made, or undefined for any other bdev. */
export function imageOfSourceBdev(bdevName: string): string | undefined {
  if (!bdevName.startsWith(IMAGE_PREFIX) || !bdevName.endsWith(SOURCE_SUFFIX)) return undefined;
  const image = bdevName.slice(IMAGE_PREFIX.length, -SOURCE_SUFFIX.length);
  return image.length > 0 ? image : undefined;
}

export function checkImageName(image: string): void {
  if (!IMAGE_NAME_RE.test(image)) {
    throw new BackendError(`image "${image}": name must be a DNS-1123 label`, 'invalid');
  }
  if (image.endsWith(IMPORTING_SUFFIX)) {
    // Its golden lvol would read as an import in progress of another image.
    throw new BackendError(`image "${image}": names ending in "${IMPORTING_SUFFIX}" are reserved`, 'invalid');
  }
  if (image.length > IMAGE_NAME_MAX) {
    throw new BackendError(
      `image "${image}": name must be at most ${IMAGE_NAME_MAX} characters (SPDK lvol names are limited to ${LVOL_NAME_MAX})`,
      'invalid',
    );
  }
}

export function checkDiskId(id: string): void {
  if (!LVOL_NAME_RE.test(id) || id.length > LVOL_NAME_MAX) {
    throw new BackendError(`disk "${id}": id must be 1-${LVOL_NAME_MAX} characters of [A-Za-z0-9_.-]`, 'invalid');
  }
  if (DISK_HELPER_RE.test(id)) {
    throw new BackendError(`disk "${id}": ids ending in ".hyd" or ".hsnap" are reserved (hydration helpers)`, 'invalid');
  }
  if (id.startsWith(IMAGE_PREFIX)) {
    throw new BackendError(`disk "${id}": id must not start with "${IMAGE_PREFIX}" (reserved for cached images)`, 'invalid');
  }
}

/** The contract's `<slot>/<disk>` (contract/layout.ts), or BackendError 'invalid'. */
export function checkControllerName(name: string): { slot: string; disk: string } {
  const parts = parseControllerName(name);
  if (!parts) {
    throw new BackendError(`controller "${name}": name must be <slot>/<disk>, a slot-NN slot and a DNS-1123 label of at most 63 characters`, 'invalid');
  }
  return parts;
}
