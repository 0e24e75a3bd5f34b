/** Pure pieces of the device plugin: slot names, device lists, allocation, readiness. */
import path from 'node:path';
import type { SlotStatus } from '../src/api/status.js';
import { POD_SOCKET_DIR, slotDir } from '../src/contract/index.js';
import type { Device } from './generated/deviceplugin/v1beta1/Device.js';
import type { ContainerAllocateResponse } from './generated/deviceplugin/v1beta1/ContainerAllocateResponse.js';

/** Where the slot's socket directory appears inside the compute container. */
export const SLOT_MOUNT_PATH = POD_SOCKET_DIR;
/** Env var telling the container which slot it holds (for logs and debugging). */
export const SLOT_ENV = 'KUBEVIRT_SPDK_SLOT';
export const MAX_SLOTS = 1000;

/** `slot-00` .. `slot-NN` (three digits beyond 100 slots, as SLOT_RE allows). */
export function slotIds(count: number): string[] {
  if (!Number.isInteger(count) || count < 1 || count > MAX_SLOTS) throw new RangeError(`slot count ${count} must be an integer in 1..${MAX_SLOTS}`);
  const width = count > 100 ? 3 : 2;
  return Array.from({ length: count }, (_, i) => `slot-${String(i).padStart(width, '0')}`);
}

export function deviceList(ids: readonly string[], healthy: boolean): Device[] {
  const health = healthy ? 'Healthy' : 'Unhealthy';
  return ids.map((ID) => ({ ID, health }));
}

/** A request kubelet should not have sent; answered with INVALID_ARGUMENT. */
export class SlotRequestError extends Error {
  override readonly name = 'SlotRequestError';
}

/** The one slot a container asks for: exactly one, and one we advertise. */
export function requestedSlot(ids: readonly string[], known: ReadonlySet<string>, what: string): string {
  if (ids.length !== 1) {
    throw new SlotRequestError(`${what}: each container must request exactly one kubevirt-spdk.io/vhost-slot, got ${ids.length}${ids.length ? ` (${ids.join(', ')})` : ''}`);
  }
  const slot = ids[0] as string;
  if (!known.has(slot)) throw new SlotRequestError(`${what}: unknown device "${slot}" (this plugin serves ${known.size} slots)`);
  return slot;
}

export function slotHostDir(vhostDir: string, slot: string): string {
  return slotDir(vhostDir, slot);
}

export function containerAllocation(vhostDir: string, slot: string): ContainerAllocateResponse {
  return {
    envs: { [SLOT_ENV]: slot },
    mounts: [{ container_path: SLOT_MOUNT_PATH, host_path: slotHostDir(vhostDir, slot), read_only: false }],
  };
}

export function slotStatusFile(stateDir: string, slot: string): string {
  return path.join(stateDir, 'slots', `${slot}.json`);
}

/** Why a slot status does not open the gate, or undefined when it does. */
export function notReadyReason(status: SlotStatus, slot: string): string | undefined {
  if (status.slot !== slot) return `the report is for ${status.slot}, not ${slot}`;
  if (status.ready) return undefined;
  const waiting = status.disks.filter((d) => d.phase !== 'Ready');
  if (waiting.length === 0) return `VMI ${status.vmi.namespace}/${status.vmi.name} is not ready yet`;
  return `disks not ready for VMI ${status.vmi.namespace}/${status.vmi.name}: ${waiting
    .map((d) => `${d.name} (${d.phase}${d.message ? `: ${d.message}` : ''})`)
    .join(', ')}`;
}
