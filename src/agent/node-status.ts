import { z } from 'zod';
import { DiskStatusSchema, VmiRefSchema } from '../api/status.js';
import { BootProfileSchema } from '../contract/boot-profile.js';

/**
 * `<stateDir>/status.json`: what the node serves, written atomically by the agent after each
 * reconcile and read by `kubevirt-spdk status`.
 */
export const NodeStatusSchema = z.object({
  version: z.literal(1),
  backend: z.object({ kind: z.enum(['spdk', 'qsd']), ok: z.boolean(), message: z.string().optional() }),
  updatedAt: z.string(),
  /** The agent's resync period: a file older than a few periods is stale. */
  resyncMs: z.number(),
  reconcile: z.object({ reason: z.string(), passes: z.number(), durationMs: z.number(), converged: z.boolean() }),
  images: z.array(
    z.object({
      name: z.string(),
      phase: z.string(),
      sizeBytes: z.number(),
      cloneCount: z.number(),
      lastUse: z.string().optional(),
      message: z.string().optional(),
      /** The boot profile recorded or replayed here (published in the NodeImageCache). */
      bootProfile: BootProfileSchema.optional(),
    }),
  ),
  disks: z.array(z.object({ id: z.string(), ref: z.string(), sizeBytes: z.number(), image: z.string().optional(), owned: z.boolean(), vmi: z.string().optional() })),
  controllers: z.array(z.object({ name: z.string(), diskRef: z.string(), socketPath: z.string(), sessions: z.number(), readonly: z.boolean() })),
  vmis: z.array(z.object({ vmi: VmiRefSchema, origin: z.string(), slot: z.string().optional(), problems: z.array(z.string()), disks: z.array(DiskStatusSchema) })),
  orphans: z.array(z.object({ object: z.string(), name: z.string(), firstSeen: z.string(), collectAt: z.string() })),
  blocked: z.array(z.object({ object: z.string(), name: z.string(), reason: z.string() })),
  problems: z.array(z.string()),
});
export type NodeStatus = z.infer<typeof NodeStatusSchema>;
