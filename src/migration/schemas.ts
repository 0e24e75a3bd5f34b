import { z } from 'zod';
import { RemoteDiskRefSchema } from '../backend/remote.js';

/**
 * KubeVirt's `VirtualMachineInstance.status.migrationState` (kubevirt.io/v1
 * VirtualMachineInstanceMigrationState), the fields the coordinator reads. Written by
 * KubeVirt, not by users: unknown fields pass through (newer KubeVirt adds some).
 */
export const MigrationStateSchema = z
  .object({
    migrationUid: z.string().optional(),
    sourceNode: z.string().optional(),
    targetNode: z.string().optional(),
    targetPod: z.string().optional(),
    targetNodeAddress: z.string().optional(),
    startTimestamp: z.string().optional(),
    endTimestamp: z.string().optional(),
    completed: z.boolean().optional(),
    failed: z.boolean().optional(),
    abortRequested: z.boolean().optional(),
    abortStatus: z.enum(['Succeeded', 'Failed', 'Aborting']).optional(),
    mode: z.enum(['PreCopy', 'PostCopy']).optional(),
    migrationConfiguration: z.object({ allowPostCopy: z.boolean().optional() }).passthrough().optional(),
  })
  .passthrough();
export type MigrationState = z.output<typeof MigrationStateSchema>;

/**
 * What this node recorded of one VMI's migration (the planner's record), persisted so that a
 * restarted agent plans the same intent. Keys of the records are disk names.
 */
export const MigrationJournalSchema = z
  .object({
    /** The migration this record belongs to; a different one starts from scratch. */
    migrationUid: z.string(),
    role: z.enum(['source', 'target']),
    /** Source: exports made (and published to the target). */
    exports: z.record(RemoteDiskRefSchema).default({}),
    /** Target: where each disk is served from here: another node's export, or a shared bdev. */
    attached: z
      .record(
        z.discriminatedUnion('kind', [
          z
            .object({
              kind: z.literal('remote'),
              ref: RemoteDiskRefSchema,
              node: z.string(),
              /** Served as a local clone that hydrates after switchover (else attached as it is: the data stays there). */
              lazy: z.boolean().optional(),
            })
            .strict(),
          z.object({ kind: z.literal('shared'), bdev: z.string() }).strict(),
        ]),
      )
      .default({}),
    /** Target: controllers the agent serves the VMI from here, by disk name. */
    controllers: z.record(z.string()).default({}),
    /** Where each disk's data lives once the migration is over. */
    dataNode: z.record(z.string()).default({}),
    /**
     * Disks whose copy is complete: target, the disks that stand alone here (published on the
     * VMI for the source); source, the disks the target said so of (their exports are released).
     */
    hydrated: z.array(z.string()).default([]),
    /** The other node of the migration (for a record planned after KubeVirt moved on). */
    peer: z.string().optional(),
    /** Target: an export that could not be reached (the migration cannot succeed). */
    unreachable: z.object({ disk: z.string(), message: z.string() }).strict().optional(),
    phase: z.enum(['preparing', 'ready', 'serving', 'handedOver', 'rolledBack', 'refused']).default('preparing'),
  })
  .strict();
export type MigrationJournal = z.output<typeof MigrationJournalSchema>;
