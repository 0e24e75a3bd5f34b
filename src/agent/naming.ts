import { createHash } from 'node:crypto';
import { MAX_SOCKET_PATH_BYTES, socketPathTooLong } from '../api/limits.js';
import { SLOT_RE } from '../api/volumes.js';

/**
 * Deterministic backend names. The same (VMI uid, disk name) always gives the same disk id, so
 * a restarted agent finds what it made before without trusting any create's result, and
 * anything that matches these shapes but belongs to no VMI can be recognised as an orphan.
 */

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

/** `<slot>/<disk>`: the socket is `<vhostDir>/<slot>/<disk>`, `/var/run/kubevirt-spdk/<disk>` in the pod. */
export function controllerName(slot: string, disk: string): string {
  return `${slot}/${disk}`;
}

export function parseControllerName(name: string): { slot: string; disk: string } | undefined {
  const i = name.indexOf('/');
  if (i < 0) return undefined;
  const slot = name.slice(0, i);
  const disk = name.slice(i + 1);
  if (!SLOT_RE.test(slot) || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(disk)) return undefined;
  return { slot, disk };
}

export function isOurControllerName(name: string): boolean {
  return parseControllerName(name) !== undefined;
}

/** Why a controller's socket cannot be bound (checked before anything is created for its disk). */
export function socketPathProblem(vhostDir: string, controller: string): string | undefined {
  const p = `${vhostDir.replace(/\/+$/, '')}/${controller}`;
  return socketPathTooLong(p) ? `socket path ${p} is ${Buffer.byteLength(p)} bytes, over the ${MAX_SOCKET_PATH_BYTES} a unix socket allows (sun_path); use a shorter vhost dir, slot or disk name` : undefined;
}

/** The golden lvol (or file) of a CachedImage. */
export function goldenImageName(image: string): string {
  return `img-${image}`;
}

/** The key of one desired disk in status and memory: `<vmi uid>/<disk>`. */
export function diskKey(vmiUid: string, disk: string): string {
  return `${vmiUid}/${disk}`;
}
