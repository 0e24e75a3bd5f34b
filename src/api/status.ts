import { z } from 'zod';

/**
 * What the agent reports per disk: in the VMI's `kubevirt-spdk.io/status` annotation and in
 * the per-slot readiness file that the device plugin's PreStartContainer waits on.
 */
export const DiskPhaseSchema = z.enum(['Pending', 'Importing', 'Provisioning', 'Ready', 'Failed', 'Deleting']);
export type DiskPhase = z.infer<typeof DiskPhaseSchema>;

export const DiskStatusSchema = z.object({
  name: z.string(),
  phase: DiskPhaseSchema,
  message: z.string().optional(),
  /** Socket path on the node. */
  socket: z.string().optional(),
  /** Where the disk's data lives (node name, or `local`), for migration. */
  dataNode: z.string().optional(),
  /**
   * A migrated disk whose data is still (partly) on node `from`: `Attached` (served from that
   * node's export; before switchover, or for good on a backend that cannot copy), `Cloned`
   * (a local clone, copy not started: the source still runs the VM), `Hydrating`/`Paused`
   * (copying; paused while the source is unreachable), `Hydrated` (no longer reads from it).
   */
  migration: z
    .object({
      phase: z.enum(['Attached', 'Cloned', 'Hydrating', 'Paused', 'Hydrated']),
      from: z.string(),
      percent: z.number().min(0).max(100).optional(),
    })
    .optional(),
});
export type DiskStatus = z.infer<typeof DiskStatusSchema>;

export const VmiRefSchema = z.object({ namespace: z.string(), name: z.string(), uid: z.string() });
export type VmiRef = z.infer<typeof VmiRefSchema>;

/** The VMI annotation `kubevirt-spdk.io/status` (JSON). */
export const VmiStatusSchema = z.object({
  node: z.string().optional(),
  slot: z.string().optional(),
  disks: z.array(DiskStatusSchema),
  updatedAt: z.string(),
});
export type VmiStatus = z.infer<typeof VmiStatusSchema>;

/**
 * `<stateDir>/slots/<slot>.json`, written atomically by the agent after each reconcile of a
 * slot. The device plugin's PreStartContainer waits until `ready` is true.
 */
export const SlotStatusSchema = z.object({
  slot: z.string(),
  vmi: VmiRefSchema,
  ready: z.boolean(),
  disks: z.array(DiskStatusSchema),
  updatedAt: z.string(),
});
export type SlotStatus = z.infer<typeof SlotStatusSchema>;
