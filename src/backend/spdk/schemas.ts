import { z } from 'zod';
import type { Bdev } from '../../spdk/schemas.js';

/**
 * `driver_specific.lvol` of an lvol bdev in `bdev_get_bdevs` (v24.01 vbdev_lvol dump_info):
 * the only place that names a clone's parent. The shared Bdev schema leaves driver_specific
 * open, so this backend reads the part it needs here. Lenient: fields vary across versions.
 */
export const LvolDriverInfoSchema = z
  .object({
    lvol_store_uuid: z.string().optional(),
    base_bdev: z.string().optional(),
    thin_provision: z.boolean().optional(),
    snapshot: z.boolean().optional(),
    clone: z.boolean().optional(),
    /** Parent snapshot's lvol name (without the lvstore prefix). */
    base_snapshot: z.string().optional(),
    /** Lvol names of the clones of a snapshot. */
    clones: z.array(z.string()).optional(),
    esnap_clone: z.boolean().optional(),
    external_snapshot_name: z.string().optional(),
  })
  .passthrough();
export type LvolDriverInfo = z.output<typeof LvolDriverInfoSchema>;

export function lvolInfoOf(bdev: Bdev): LvolDriverInfo | undefined {
  const parsed = LvolDriverInfoSchema.safeParse(bdev.driver_specific.lvol);
  return parsed.success ? parsed.data : undefined;
}

export const bdevSizeBytes = (b: Bdev): number => b.block_size * b.num_blocks;

/** How many distinct hosts (peer nodes) hold a controller of a subsystem. */
export const distinctHosts = (ctrls: readonly { hostnqn: string }[]): number => new Set(ctrls.map((c) => c.hostnqn)).size;
