/**
 * qsd backend: how fast a disk is provisioned from a cached image (qcow2 overlay vs copying
 * the image), how long a controller takes, and how long recovery from a SIGKILLed daemon
 * takes. Ratios are against baselines measured in the same run.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { QsdBackend } from '../src/backend/qsd/index.js';
import { fmt, percentile, timeIt, type BenchSection } from './harness.js';

const MiB = 1024 * 1024;

export async function section(): Promise<BenchSection> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qb-'));
  const backend = new QsdBackend({ stateDir: path.join(dir, 's'), vhostDir: path.join(dir, 'v'), managed: true, restartDelayMs: 20 });
  try {
    await backend.start();
    const imageBytes = 128 * MiB;
    const src = path.join(dir, 'src.raw');
    await fs.writeFile(src, Buffer.alloc(imageBytes, 0xaa));
    const imported = await timeIt(() => backend.ensureImage({ name: 'img', source: { hostPath: { path: src } }, format: 'raw' }));

    // Baseline: what provisioning costs without a cache of clones (a full copy per disk).
    const copies: number[] = [];
    for (let i = 0; i < 3; i++) {
      copies.push((await timeIt(() => fs.copyFile(imported.value.ref, path.join(dir, `copy${i}.raw`)))).ms);
      await fs.rm(path.join(dir, `copy${i}.raw`));
    }
    const clones: number[] = [];
    const controllers: number[] = [];
    const N = 20;
    for (let i = 0; i < N; i++) {
      const d = await timeIt(() => backend.ensureDisk({ id: `d${i}`, source: { kind: 'image', image: 'img' } }));
      clones.push(d.ms);
      controllers.push(
        (await timeIt(() => backend.ensureController({ name: `slot-${String(i).padStart(2, '0')}/root`, diskRef: d.value.ref, readonly: false }))).ms,
      );
    }
    const pings: number[] = [];
    for (let i = 0; i < 50; i++) pings.push((await timeIt(() => backend.health())).ms);

    // Recovery: SIGKILL the daemon, wait for the restart, recreate every controller.
    const pid = Number(await fs.readFile(path.join(dir, 's', 'qsd.pid'), 'utf8'));
    const recovery = await timeIt(async () => {
      const up = new Promise<void>((r) => backend.once('connected', () => r()));
      process.kill(pid, 'SIGKILL');
      await up;
      const restartedAt = process.hrtime.bigint();
      const { disks } = await backend.observe();
      for (const [i, d] of disks.entries()) await backend.ensureController({ name: `slot-${String(i).padStart(2, '0')}/root`, diskRef: d.ref, readonly: false });
      return Number(process.hrtime.bigint() - restartedAt) / 1e6;
    });

    const sort = (a: number[]): number[] => [...a].sort((x, y) => x - y);
    const copyP50 = percentile(sort(copies), 50);
    const cloneP50 = percentile(sort(clones), 50);
    const ctrlS = sort(controllers);
    const pingS = sort(pings);
    return {
      area: 'qsd backend (qemu-storage-daemon)',
      tables: [
        {
          title: `Disk from a cached ${imageBytes / MiB} MiB image`,
          columns: ['operation', 'p50 ms', 'ratio vs full copy'],
          rows: [
            ['full copy of the image (baseline)', fmt(copyP50), '1.00'],
            ['ensureDisk (qcow2 overlay)', fmt(cloneP50), fmt(cloneP50 / copyP50, 3)],
            ['first import of the image (hostPath, sha256)', fmt(imported.ms), fmt(imported.ms / copyP50)],
          ],
          notes: ['An overlay costs the same whatever the image size; a copy grows with it.'],
        },
        {
          title: `Controllers (${N} disks)`,
          columns: ['operation', 'p50 ms', 'p95 ms', 'ratio p50 vs QMP round trip'],
          rows: [
            ['health() = query-version (baseline)', fmt(percentile(pingS, 50), 3), fmt(percentile(pingS, 95), 3), '1.00'],
            ['ensureController (blockdev-add + block-export-add)', fmt(percentile(ctrlS, 50)), fmt(percentile(ctrlS, 95)), fmt(percentile(ctrlS, 50) / percentile(pingS, 50), 1)],
          ],
        },
        {
          title: 'Recovery after SIGKILL of the managed daemon',
          columns: ['phase', 'ms'],
          rows: [
            ['kill -> restarted and reconnected', fmt(recovery.ms - recovery.value)],
            [`recreate ${N} controllers`, fmt(recovery.value)],
            ['total', fmt(recovery.ms)],
          ],
          notes: ['The guest waits for this plus up to one reconnectInterval (default 1 s): QEMU retries the socket once per interval.'],
        },
      ],
    };
  } finally {
    await backend.close();
    await fs.rm(dir, { recursive: true, force: true });
  }
}
