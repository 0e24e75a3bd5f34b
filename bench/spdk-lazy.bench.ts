/**
 * Lazy images on real spdk_tgt (SPDK_TGT, and SPDK_TGT_OLD for a second version): node B makes
 * its first disk of an image that node A holds, lazily (A's golden over NVMe-oF/TCP on
 * loopback) and by a full import of the same image from a local file, for two image sizes;
 * then how fast B hydrates. Without SPDK_TGT the rows say they were skipped.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { SpdkBackend } from '../src/backend/spdk/index.js';
import type { ImageSpec } from '../src/backend/types.js';
import { SpdkRpcClient } from '../src/spdk/client.js';
import { freePort, RealTarget, shortTempDir, spdkTargets } from '../test/spdk/target.js';
import { fmt, timeIt, type BenchSection, type BenchTable } from './harness.js';

const MiB = 2 ** 20;
const SIZES_MIB = (process.env.BENCH_LAZY_MIB ?? '64,512').split(',').map(Number);
/** Bound of one step (an ensureImage, a hydration, a cleanup): a stuck target fails its row. */
const STEP_MS = 180_000;

interface Node {
  name: string;
  tgt: RealTarget;
  backend: SpdkBackend;
}

/**
 * Every step of a run races its nodes' processes and a deadline: a target that exits by
 * itself (a crash) or a step that does not end fails the row with what happened, instead
 * of waiting on RPCs that will never be answered.
 */
class Rig {
  readonly nodes: Node[] = [];

  async step<T>(what: string, fn: () => Promise<T>, ms = STEP_MS): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms);
    });
    const deaths = this.nodes.map((n) => n.tgt.died().then((why): never => {
      throw new Error(`${what}: ${n.name}'s ${why}`);
    }));
    try {
      return await Promise.race([fn(), deadline, ...deaths]);
    } catch (e) {
      // An RPC can fail on the closed socket before the exit is seen: name the crash if there is one.
      await new Promise((r) => setTimeout(r, 500));
      const dead = this.nodes.find((n) => n.tgt.crashed !== undefined);
      if (dead) {
        const err = new Error(`${what}: ${dead.name}'s ${dead.tgt.crashed ?? ''}`);
        (err as Error & { log?: string }).log = dead.tgt.logTail(4000);
        throw err;
      }
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  async add(bin: string, dir: string, name: string, lazyLocal = false): Promise<Node> {
    const tgt = new RealTarget(bin, path.join(dir, `${name}.sock`), path.join(dir, `vh-${name}`));
    const backend = new SpdkBackend({
      client: new SpdkRpcClient({ socketPath: tgt.socketPath, timeoutMs: 300_000 }),
      nodeName: name,
      vhostDir: tgt.vhostDir,
      stateDir: path.join(dir, `state-${name}`),
      lvstore: { baseBdev: { kind: 'aio', filename: path.join(dir, `lvs-${name}.img`), sizeMiB: 4096, blockSize: 4096 } },
      lazyLocal,
    });
    const n = { name, tgt, backend };
    this.nodes.push(n);
    await this.step(`${name}: start`, async () => {
      await tgt.start();
      await backend.start();
    });
    return n;
  }

  /** Closes and kills every node (bounded: a backend whose target is gone must not hold it). */
  async stop(): Promise<void> {
    for (const n of this.nodes.splice(0).reverse()) {
      await Promise.race([n.backend.close().catch(() => undefined), new Promise((r) => setTimeout(r, 15_000))]);
      await n.tgt.kill('SIGKILL');
    }
  }
}

async function imageSpec(dir: string, name: string, mib: number): Promise<ImageSpec> {
  const file = path.join(dir, `${name}.raw`);
  const data = randomBytes(mib * MiB);
  await fs.writeFile(file, data);
  return { name, format: 'raw', source: { hostPath: { path: file, sha256: createHash('sha256').update(data).digest('hex') } } };
}

async function untilReady(b: SpdkBackend, image: string): Promise<void> {
  for (;;) {
    const img = (await b.observe()).images.find((i) => i.name === image);
    if (img?.phase === 'ready') return;
    if (img?.phase === 'failed') throw new Error(`${image}: failed: ${img.message ?? ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

type Row = Array<string | number>;

/** Runs both tables' rows for one binary into `peer` and `local` (rows measured before a failure stay). */
async function benchTarget(bin: string, peer: Row[], local: Row[]): Promise<void> {
  const dir = await shortTempDir('kbl-');
  const rig = new Rig();
  try {
    const a = await rig.add(bin, dir, 'node-a');
    const b = await rig.add(bin, dir, 'node-b');
    const fullMs = new Map<number, number>();
    for (const mib of SIZES_MIB) {
      const lazyName = `lazy${mib}`;
      const fullName = `full${mib}`;
      const spec = await imageSpec(dir, lazyName, mib);
      const ref = await rig.step(`${mib} MiB: node-a imports and exports`, async () => {
        await a.backend.ensureImage(spec);
        return a.backend.exportImage(lazyName, { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: await freePort() }, allowedNodes: ['node-b'] });
      });
      const t0 = process.hrtime.bigint();
      const lazy = await rig.step(`${mib} MiB: node-b lazy image + disk`, () =>
        timeIt(async () => {
          await b.backend.ensureImage({ ...spec, peer: ref });
          return b.backend.ensureDisk({ id: `d-${lazyName}`, source: { kind: 'image', image: lazyName } });
        }),
      );
      await rig.step(`${mib} MiB: node-b hydration`, () => untilReady(b.backend, lazyName));
      const hydrateMs = Number(process.hrtime.bigint() - t0) / 1e6;
      const fullSpec = await imageSpec(dir, fullName, mib);
      const full = await rig.step(`${mib} MiB: node-b full import + disk`, () =>
        timeIt(async () => {
          await b.backend.ensureImage(fullSpec);
          return b.backend.ensureDisk({ id: `d-${fullName}`, source: { kind: 'image', image: fullName } });
        }),
      );
      peer.push([`${b.tgt.version}`, mib, fmt(lazy.ms), fmt(full.ms), fmt(full.ms / lazy.ms), fmt(hydrateMs), fmt((mib * 1000) / hydrateMs)]);
      fullMs.set(mib, full.ms);
      await rig.step(`${mib} MiB: cleanup`, async () => {
        for (const [n, id] of [[lazyName, `d-${lazyName}`], [fullName, `d-${fullName}`]] as const) {
          await b.backend.deleteDisk(id);
          await deleteImageWhenIdle(b.backend, n);
        }
        await a.backend.unexportImage(lazyName);
        await a.backend.deleteImage(lazyName);
      });
    }
    // Node C (lazyLocal) runs alone: a third target polling the same core slowed the peers' TCP
    // connections on v24.01 beyond their deadlines.
    await rig.stop();
    const c = await rig.add(bin, dir, 'node-c', true);
    for (const mib of SIZES_MIB) {
      const full = { ms: fullMs.get(mib) ?? NaN };
      // The same kind of file on node C with lazyLocal: the file becomes the lazy golden's source.
      const fileName = `file${mib}`;
      const fileSpec = await imageSpec(dir, fileName, mib);
      const t1 = process.hrtime.bigint();
      let phase = '';
      const fromFile = await rig.step(`${mib} MiB: node-c image + disk from its file`, () =>
        timeIt(async () => {
          phase = (await c.backend.ensureImage(fileSpec)).phase;
          return c.backend.ensureDisk({ id: `d-${fileName}`, source: { kind: 'image', image: fileName } });
        }),
      );
      await rig.step(`${mib} MiB: node-c hydration`, () => untilReady(c.backend, fileName));
      const fileHydrateMs = Number(process.hrtime.bigint() - t1) / 1e6;
      local.push([`${c.tgt.version}`, mib, phase === 'hydrating' ? 'lazy' : `full import (${phase})`, fmt(fromFile.ms), fmt(full.ms), fmt(full.ms / fromFile.ms), fmt(fileHydrateMs)]);
      await rig.step(`${mib} MiB: node-c cleanup`, async () => {
        await c.backend.deleteDisk(`d-${fileName}`);
        await deleteImageWhenIdle(c.backend, fileName);
      });
    }
  } finally {
    await rig.stop();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** 'ready' shows once the golden exists; the hydration task then repoints and lets its source go. */
async function deleteImageWhenIdle(b: SpdkBackend, image: string): Promise<void> {
  for (;;) {
    const err = await b.deleteImage(image).then(() => undefined, (e: unknown) => e as Error);
    if (!err) return;
    if (!/hydration is running/.test(err.message)) throw err;
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function section(): Promise<BenchSection> {
  const table: BenchTable = {
    title: 'First disk Ready on a node that does not hold the image: lazy (a peer\'s golden over NVMe-oF/TCP) vs full import',
    columns: ['target', 'image MiB', 'lazy: ensureImage+ensureDisk ms', 'full import+ensureDisk ms', 'full / lazy', 'lazy: until hydrated ms', 'hydration MiB/s'],
    rows: [],
    notes: [
      'Two spdk_tgt on one machine (loopback TCP, both polling core 0, shared with the rest of the machine). Lazy: attach the peer export, external-snapshot clone, read-only, clone the disk; hydration runs after, in the background (a helper clone inflated, snapshotted as the golden, the lazy golden repointed onto it with bdev_lvol_set_parent on v24.09+, the peer detached).',
      'Full import: the same bytes from a local file (hostPath: copy + sha256, aio bdev, inflate, snapshot), no network download: a lower bound for an origin import. One run per size.',
      'Target: lazy time independent of the image size (512 MiB / 64 MiB row ratio near 1).',
    ],
  };
  const fromFile: BenchTable = {
    title: 'First disk Ready from a file on the node: lazy from the file (lazyLocal, v24.09+) vs full import',
    columns: ['target', 'image MiB', 'path taken', 'lazyLocal: ensureImage+ensureDisk ms', 'full import+ensureDisk ms', 'full / lazyLocal', 'lazyLocal: until hydrated ms'],
    rows: [],
    notes: [
      'Both fetch the file the same way (hostPath: copy + sha256). lazyLocal then hashes the file once more (its digest is recorded and checked before an aio bdev is made over it again after a restart), makes the aio bdev with the image id as uuid, an external-snapshot clone (read-only) and the disk; hydration copies the file into the lvstore after. v24.01 has no stable aio uuid and takes the full import ("path taken").',
      'The full-import column is node B\'s full import of an image of the same size in the same run (table above).',
    ],
  };
  const targets = spdkTargets();
  if (targets.length === 0) {
    table.rows.push(['skipped: SPDK_TGT is not set', '-', '-', '-', '-', '-', '-']);
    fromFile.rows.push(['skipped: SPDK_TGT is not set', '-', '-', '-', '-', '-', '-']);
    return { area: 'Lazy images on real SPDK', tables: [table, fromFile] };
  }
  for (const t of targets) {
    try {
      await benchTarget(t.bin, table.rows, fromFile.rows);
    } catch (e) {
      const err = e as Error & { log?: string };
      process.stderr.write(`spdk-lazy (${t.label}): ${err.message}\n${err.log !== undefined ? `--- its log ---\n${err.log}\n` : ''}`);
      table.rows.push([t.label, `failed: ${err.message.split('\n')[0] ?? ''}`, '-', '-', '-', '-', '-']);
    }
  }
  return { area: 'Lazy images on real SPDK', tables: [table, fromFile] };
}
