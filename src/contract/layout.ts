import { createHash } from 'node:crypto';
import path from 'node:path';
import type { ImageSource } from '../api/cachedimage.js';
import { MAX_SOCKET_PATH_BYTES, socketPathTooLong } from '../api/limits.js';

/**
 * The node layout, defined once: what every component (webhook, converter, device plugin,
 * agent, backends, migration) agrees on about names and paths on a node.
 *
 *   disk id      d-<12 hex of sha256(vmi uid/disk)>-<disk>     (backend object name, <= 63)
 *   controller   <slot>/<disk>
 *   host socket  <vhostDir>/<slot>/<disk>
 *   slot dir     <vhostDir>/<slot>                             (mounted into the pod)
 *   pod socket   /var/run/kubevirt-spdk/<disk>
 *
 * Deterministic names let a restarted agent find what it made before without trusting any
 * create's result, and recognise as orphans the objects that have our shape but no owner.
 */

/** A slot the device plugin hands out: `slot-00` .. `slot-999`. */
export const SLOT_RE = /^slot-[0-9]{2,3}$/;
/** Disk (volume) names: DNS-1123 labels, so they are safe as path components. */
export const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** Where the slot's directory appears in the virt-launcher pod (compute container). */
export const POD_SOCKET_DIR = '/var/run/kubevirt-spdk';

/** SPDK lvol names are limited to 63 characters. */
export const MAX_DISK_ID_LENGTH = 63;
const HASH_HEX = 12;
const DISK_ID_RE = /^d-[0-9a-f]{12}-[a-z0-9-]*$/;

/** `d-<12 hex of sha256(uid/disk)>-<disk, truncated>`: unique by the hash, readable by the suffix. */
export function diskId(vmiUid: string, disk: string): string {
  const hash = createHash('sha256').update(`${vmiUid}/${disk}`).digest('hex').slice(0, HASH_HEX);
  const room = MAX_DISK_ID_LENGTH - 2 - HASH_HEX - 1;
  return `d-${hash}-${disk.slice(0, room)}`;
}

export function isOurDiskId(id: string): boolean {
  return id.length <= MAX_DISK_ID_LENGTH && DISK_ID_RE.test(id);
}

/** The key of one desired disk in status, journal and memory: `<vmi uid>/<disk>`. */
export function diskKey(vmiUid: string, disk: string): string {
  return `${vmiUid}/${disk}`;
}

export function controllerName(slot: string, disk: string): string {
  return `${slot}/${disk}`;
}

/** `<slot>/<disk>` split, or undefined when the name is not one of ours. */
export function parseControllerName(name: string): { slot: string; disk: string } | undefined {
  const i = name.indexOf('/');
  if (i < 0) return undefined;
  const slot = name.slice(0, i);
  const disk = name.slice(i + 1);
  if (!SLOT_RE.test(slot) || disk.length > 63 || !DNS1123_LABEL.test(disk)) return undefined;
  return { slot, disk };
}

export function isOurControllerName(name: string): boolean {
  return parseControllerName(name) !== undefined;
}

/** `<vhostDir>/<slot>`: the directory the device plugin mounts into the pod. */
export function slotDir(vhostDir: string, slot: string): string {
  return path.join(vhostDir, slot);
}

/** `<vhostDir>/<slot>/<disk>`: where the backend binds a controller's socket on the host. */
export function hostSocketPath(vhostDir: string, controller: string): string {
  return path.join(vhostDir, controller);
}

/** The same socket seen from the compute container. */
export function podSocketPath(disk: string, socketDir = POD_SOCKET_DIR): string {
  return `${socketDir.replace(/\/+$/, '')}/${disk}`;
}

/** Why a controller's socket cannot be bound (checked before anything is created for its disk). */
export function socketPathProblem(vhostDir: string, controller: string): string | undefined {
  const p = hostSocketPath(vhostDir, controller);
  return socketPathTooLong(p) ? `socket path ${p} is ${Buffer.byteLength(p)} bytes, over the ${MAX_SOCKET_PATH_BYTES} a unix socket allows (sun_path); use a shorter vhost dir, slot or disk name` : undefined;
}

/** The golden lvol (or file) of a CachedImage. */
export function goldenImageName(image: string): string {
  return `img-${image}`;
}

/**
 * The content key of an image: the backend name of its golden. A golden is identified by its
 * content, not by the CachedImage that asked for it, so two CachedImages of the same content
 * share one golden and a CachedImage whose source changed gets a new golden beside the old one
 * (the old one goes when no disk uses it). `sha256-<40 hex>` (160 bits; `-q` for a qcow2
 * source, whose converted content differs from the same bytes read as raw): a DNS label short
 * enough for every driver's naming rule (spdk's `img-<name>-importing` in 63 characters).
 * A source without a sha256 (a development host path) keeps the CachedImage name as its key.
 */
export function imageKey(image: { name: string; source: ImageSource; format: 'raw' | 'qcow2' }): string {
  const sha = 'http' in image.source ? image.source.http.sha256 : image.source.hostPath.sha256;
  if (sha === undefined) return image.name;
  return `sha256-${sha.slice(0, 40)}${image.format === 'qcow2' ? '-q' : ''}`;
}

/** Whether a backend image name is a content key (not a CachedImage name kept as its key). */
export const isContentKey = (name: string): boolean => /^sha256-[0-9a-f]{40}(-q)?$/.test(name);
