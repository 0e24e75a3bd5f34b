/**
 * Migration: time from "target known" (migrationState names this node) to "target controller
 * ready" (reportTargetReady), for 1 and 8 node-local disks, against two in-process SPDK
 * simulators sharing a fabric. The source has exported its disks already (it starts when the
 * migration does, in parallel with the target pod being scheduled). Baseline: creating the same
 * number of controllers locally on the target, without migration.
 */
import { fmt, percentile, timeIt, type BenchSection } from './harness.js';
import { planMigration, type CoordinatorInput } from '../src/migration/coordinator.js';
import { executeMigrationPlan } from '../src/migration/executor.js';
import type { MigrationJournal, MigrationState } from '../src/migration/schemas.js';
import { startSimPair } from '../testing/spdk-sim/pair.js';

const ROUNDS = 15;

export async function section(): Promise<BenchSection> {
  const rows: Array<Array<string | number>> = [];
  for (const n of [1, 8]) {
    const pair = await startSimPair();
    try {
      const disks = Array.from({ length: n }, (_, i) => ({ name: `d${i}`, diskId: `vmi-d${i}`, source: { kind: 'local' as const }, readonly: false }));
      for (const d of disks) {
        const disk = await pair.source.backend.ensureDisk({ id: d.diskId, source: { kind: 'blank' }, capacityBytes: 4 * 1024 * 1024 });
        await pair.source.backend.ensureController({ name: `slot-01/${d.name}`, diskRef: disk.ref, readonly: false });
        // Baseline disks on the target: the same count, served locally.
        await pair.target.backend.ensureDisk({ id: `local-${d.diskId}`, source: { kind: 'blank' }, capacityBytes: 4 * 1024 * 1024 });
      }
      const mig: number[] = [];
      const base: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        const state: MigrationState = { migrationUid: `m${r}`, sourceNode: 'a', targetNode: 'b', mode: 'PreCopy' };
        const input = (node: string, journal: MigrationJournal | undefined, exports?: CoordinatorInput['sourceExports']): CoordinatorInput => ({
          node,
          state,
          disks,
          slot: node === 'a' ? 'slot-01' : 'slot-07',
          backendCanMigrate: true,
          exportAddress: { kind: 'tcp', host: '127.0.0.1', port: 4420 },
          sourceExports: exports,
          journal,
        });
        const src = await executeMigrationPlan(pair.source.backend, planMigration(input('a', undefined)), { save: async () => {} });
        let ready = false;
        const t = await timeIt(async () => {
          const j = await executeMigrationPlan(pair.target.backend, planMigration(input('b', undefined, src?.exports)), {
            save: async () => {},
            onTargetReady: () => {
              ready = true;
            },
          });
          return j;
        });
        if (!ready) throw new Error('target never reported ready');
        mig.push(t.ms);
        // Roll back so the next round starts from nothing.
        const failed = { ...state, failed: true };
        await executeMigrationPlan(pair.target.backend, planMigration({ ...input('b', t.value, src?.exports), state: failed }), { save: async () => {} });
        await executeMigrationPlan(pair.source.backend, planMigration({ ...input('a', src), state: failed }), { save: async () => {} });

        const b = await timeIt(async () => {
          for (const d of disks) await pair.target.backend.ensureController({ name: `slot-09/${d.name}`, diskRef: `kvs/local-${d.diskId}`, readonly: false });
        });
        base.push(b.ms);
        for (const d of disks) await pair.target.backend.deleteController(`slot-09/${d.name}`);
      }
      mig.sort((x, y) => x - y);
      base.sort((x, y) => x - y);
      const m50 = percentile(mig, 50);
      const b50 = percentile(base, 50);
      rows.push([n, fmt(m50), fmt(percentile(mig, 95)), fmt(b50), fmt(m50 / b50)]);
    } finally {
      await pair.close();
    }
  }
  return {
    area: 'migration',
    tables: [
      {
        title: 'Migration: target known -> target controllers ready (two SPDK simulators, shared fabric)',
        columns: ['disks', 'p50 ms', 'p95 ms', 'baseline p50 ms (local controllers)', 'ratio'],
        rows,
        notes: [`${ROUNDS} rounds each; goal: under 100 ms for 8 disks. Includes planning, attach, controller creation and the journal saves.`],
      },
    ],
  };
}
