import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { DiskPhaseSchema } from '../api/status.js';

/**
 * Every Prometheus metric of kubevirt-spdk, in one place so that names, units and labels stay
 * consistent. Labels are low-cardinality by rule: phases, methods, error kinds, outcomes;
 * never VMI names or uids (those belong in logs and the status annotation).
 *
 * Components take a `Metrics` in their options (tests pass one on a fresh Registry) and fall
 * back to the process-wide one that the /metrics endpoint serves.
 */
export const METRIC_PREFIX = 'kubevirt_spdk_';

/** Disk phases as the agent reports them: every one is exported, 0 included, so alerts see it. */
export const DISK_PHASES = DiskPhaseSchema.options;

/** What a migration ended as; the migration coordinator reports one per migration. */
export const MIGRATION_OUTCOMES = ['succeeded', 'failed', 'aborted', 'refused'] as const;
export type MigrationOutcome = (typeof MIGRATION_OUTCOMES)[number];

// Provisioning is a thin clone (ms) but may wait for an import (minutes): buckets span both.
const LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
const RPC_BUCKETS = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30];

export function createMetrics(registry: Registry = new Registry()) {
  const registers = [registry];
  const n = (s: string): string => `${METRIC_PREFIX}${s}`;
  return {
    registry,
    // --- node agent
    disks: new Gauge({ name: n('disks'), help: 'Disks of the VMIs on this node, by phase (last reconcile).', labelNames: ['phase'] as const, registers }),
    backendUp: new Gauge({ name: n('backend_up'), help: '1 when the last reconcile reached the storage backend, else 0.', registers }),
    reconcileDuration: new Histogram({ name: n('reconcile_duration_seconds'), help: 'Duration of one reconcile round.', buckets: LATENCY_BUCKETS, registers }),
    provisionDuration: new Histogram({
      name: n('disk_provision_duration_seconds'),
      help: 'Time to provision one disk (image import if needed, clone, controller), by disk source.',
      labelNames: ['source'] as const,
      buckets: LATENCY_BUCKETS,
      registers,
    }),
    imageCacheHits: new Counter({ name: n('image_cache_hits_total'), help: 'Image disks cloned from an image already in the node cache.', registers }),
    imageCacheMisses: new Counter({ name: n('image_cache_misses_total'), help: 'Image disks that had to wait for the image to be imported.', registers }),
    imageCacheEvictions: new Counter({ name: n('image_cache_evictions_total'), help: 'Images evicted from the node cache.', registers }),
    imageCacheBytes: new Gauge({ name: n('image_cache_bytes'), help: 'Total virtual size of the images in the node cache.', registers }),
    imageCacheImages: new Gauge({ name: n('image_cache_images'), help: 'Number of images in the node cache.', registers }),
    imageImportDuration: new Histogram({
      name: n('image_import_duration_seconds'),
      help: 'Duration of one image import into the node cache, by outcome.',
      labelNames: ['outcome'] as const,
      buckets: LATENCY_BUCKETS,
      registers,
    }),
    recoveries: new Counter({ name: n('recoveries_total'), help: 'Live recoveries after a backend restart, by whether they converged.', labelNames: ['converged'] as const, registers }),
    recoveryDuration: new Histogram({ name: n('recovery_duration_seconds'), help: 'From backend reconnect to controllers re-created.', buckets: LATENCY_BUCKETS, registers }),
    recoveredControllers: new Counter({ name: n('recovered_controllers_total'), help: 'Controllers re-created by live recoveries.', registers }),
    backendRetries: new Counter({
      name: n('backend_retries_total'),
      help: 'Backend calls retried by the agent, by error kind (busy should stay rare: metadata operations on one snapshot are queued).',
      labelNames: ['kind'] as const,
      registers,
    }),
    migrations: new Counter({ name: n('migrations_total'), help: 'Live migrations of SPDK disks, by outcome.', labelNames: ['outcome'] as const, registers }),
    // --- SPDK JSON-RPC client
    spdkRpcDuration: new Histogram({ name: n('spdk_rpc_duration_seconds'), help: 'SPDK JSON-RPC call duration, by method.', labelNames: ['method'] as const, buckets: RPC_BUCKETS, registers }),
    spdkRpcErrors: new Counter({ name: n('spdk_rpc_errors_total'), help: 'Failed SPDK JSON-RPC calls, by method and error kind.', labelNames: ['method', 'kind'] as const, registers }),
    // --- admission webhook
    webhookAdmissionDuration: new Histogram({
      name: n('webhook_admission_duration_seconds'),
      help: 'Admission review handling time, by operation and decision.',
      labelNames: ['operation', 'allowed'] as const,
      buckets: RPC_BUCKETS,
      registers,
    }),
    webhookRejections: new Counter({ name: n('webhook_rejections_total'), help: 'Admission reviews denied, by HTTP-style status code.', labelNames: ['code'] as const, registers }),
    // --- device plugin
    slots: new Gauge({ name: n('vhost_slots'), help: 'vhost slots this device plugin advertises.', registers }),
    slotsHealthy: new Gauge({ name: n('vhost_slots_healthy'), help: 'vhost slots advertised Healthy.', registers }),
    slotsAllocated: new Gauge({ name: n('vhost_slots_allocated'), help: 'Distinct vhost slots kubelet allocated since the plugin started.', registers }),
    slotAllocations: new Counter({ name: n('vhost_slot_allocations_total'), help: 'Allocate calls served, one per container.', registers }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

let processMetrics: Metrics | undefined;

/** The process-wide metrics (with Node's default process metrics) that `/metrics` serves. */
export function defaultMetrics(): Metrics {
  if (!processMetrics) {
    processMetrics = createMetrics(new Registry());
    collectDefaultMetrics({ register: processMetrics.registry, prefix: METRIC_PREFIX });
  }
  return processMetrics;
}

/** For the migration coordinator: one call per migration when it ends. */
export function recordMigration(outcome: MigrationOutcome, metrics: Metrics = defaultMetrics()): void {
  metrics.migrations.inc({ outcome });
}

/** Seconds since `t0` (a `process.hrtime.bigint()` reading). */
export function secondsSince(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e9;
}
