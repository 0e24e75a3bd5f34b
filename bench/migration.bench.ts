/**
 * Migration: time from "target known" (migrationState names this node) to "target controller
 * ready" (the agent serves every disk), for 1 and 8 node-local disks, against two in-process SPDK
 * simulators sharing a fabric. The source has exported its disks already (it starts when the
 * migration does, in parallel with the target pod being scheduled). Baseline: creating the same
 * number of controllers locally on the target, without migration.
 */
import path from 'node:path';
import { NodeAgent } from '../src/agent/agent.js';
import { buildDesired } from '../src/agent/desired.js';
import { parseVmi } from '../src/api/vmi.js';
import type { RemoteDiskRef } from '../src/backend/remote.js';
import { fmt, percentile, timeIt, type BenchSection } from './harness.js';
import { planMigration, type CoordinatorInput } from '../src/migration/coordinator.js';
import type { MigrationState } from '../src/migration/schemas.js';
import { startSimPair } from '../testing/spdk-sim/pair.js';

const ROUNDS = 15;
const OWNER = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, mode: 0o660 };

export async function section(): Promise<BenchSection> {
  const rows: Array<Array<string | number>> = [];
  for (const n of [1, 8]) {
    const pair = await startSimPair();
    const agent = new NodeAgent({ backend: pair.target.backend, stateDir: path.join(pair.dir, 'agent-b'), socket: OWNER, resyncMs: 0 });
    await agent.init();
    try {
      const disks = Array.from({ length: n }, (_, i) => ({ name: `d${i}`, diskId: `vmi-d${i}`, source: { kind: 'local' as const }, readonly: false }));
      const exports: Record<string, RemoteDiskRef> = {};
      for (const d of disks) {
        const disk = await pair.source.backend.ensureDisk({ id: d.diskId, source: { kind: 'blank' }, capacityBytes: 4 * 1024 * 1024 });
        await pair.source.backend.ensureController({ name: `slot-01/${d.name}`, diskRef: disk.ref, readonly: false });
        exports[d.name] = await pair.source.backend.exportDisk(d.diskId, { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: 4420 } });
        // Baseline disks on the target: the same count, served locally.
        await pair.target.backend.ensureDisk({ id: `local-${d.diskId}`, source: { kind: 'blank' }, capacityBytes: 4 * 1024 * 1024 });
      }
      const volumes = disks.map((d) => `- {name: ${d.name}, spdkVhostBlkDisk: {blank: {}, capacity: 4Mi}}`).join('\n');
      const mig: number[] = [];
      const base: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        const vmi = parseVmi({ metadata: { name: `vm${r}`, uid: `bench-${r}`, annotations: { 'kubevirt-spdk.io/volumes': volumes } } });
        const state: MigrationState = { migrationUid: `m${r}`, sourceNode: 'a', targetNode: 'b', mode: 'PreCopy' };
        const input: CoordinatorInput = {
          node: 'b',
          state,
          disks,
          slot: 'slot-07',
          backendCanMigrate: true,
          exportAddress: { kind: 'tcp', host: '127.0.0.1', port: 4420 },
          sourceExports: exports,
          here: { exported: {}, disks: {} },
          journal: undefined,
        };
        // Planner -> node view -> the agent's reconciler (attach, controllers) until every disk is Ready.
        const t = await timeIt(async () => {
          const plan = planMigration(input);
          const serve = plan.intent.serve;
          agent.setDesired(buildDesired({ vmis: [{ origin: 'bench', vmi, slot: 'slot-07', ...(serve ? { attached: serve.attached } : {}) }], images: [] }));
          return agent.reconcile('bench');
        });
        if (!t.value.vmis[0]?.disks.every((d) => d.phase === 'Ready')) throw new Error('target never served every disk');
        mig.push(t.ms);
        // Roll back so the next round starts from nothing (the reconciler removes the controllers and detaches).
        agent.setDesired(buildDesired({ vmis: [], images: [] }));
        await agent.reconcile('bench-rollback');

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
      await agent.stop();
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
        notes: [`${ROUNDS} rounds each; goal: under 100 ms for 8 disks. Includes planning, the node view, one reconcile round (attach, controller creation, socket fix, journal saves).`],
      },
    ],
  };
}
