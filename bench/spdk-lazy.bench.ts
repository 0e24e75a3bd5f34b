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
const SIZES_MIB = (process.env.BENCH_LAZY_MIB ?? "64,512").split(",").map(Number);


interface Node {
  tgt: RealTarget;
  backend: SpdkBackend;
}

async function node(bin: string, dir: string, name: string, lazyLocal = false): Promise<Node> {
  const tgt = new RealTarget(bin, path.join(dir, `${name}.sock`), path.join(dir, `vh-${name}`));
  await tgt.start();
  const backend = new SpdkBackend({
    client: new SpdkRpcClient({ socketPath: tgt.socketPath, timeoutMs: 300_000 }),
    nodeName: name,
    vhostDir: tgt.vhostDir,
    stateDir: path.join(dir, `state-${name}`),
    lvstore: { baseBdev: { kind: 'aio', filename: path.join(dir, `lvs-${name}.img`), sizeMiB: 4096, blockSize: 4096 } },
    lazyLocal,
  });
  await backend.start();
  return { tgt, backend };
}

async function imageSpec(dir: string, name: string, mib: number): Promise<ImageSpec> {
  const file = path.join(dir, `${name}.raw`);
  const data = randomBytes(mib * MiB);
  await fs.writeFile(file, data);
  return { name, format: 'raw', source: { hostPath: { path: file, sha256: createHash('sha256').update(data).digest('hex') } } };
}

async function untilReady(b: SpdkBackend, image: string): Promise<void> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const img = (await b.observe()).images.find((i) => i.name === image);
    if (img?.phase === 'ready') return;
    if (img?.phase === 'failed' || Date.now() > deadline) throw new Error(`${image}: ${img?.phase ?? 'gone'}: ${img?.message ?? ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

type Row = Array<string | number>;

async function benchTarget(bin: string): Promise<{ peer: Row[]; local: Row[] }> {
  const dir = await shortTempDir('kbl-');
  const nodes: Node[] = [];
  try {
    const a = await node(bin, dir, 'node-a');
    nodes.push(a);
    const b = await node(bin, dir, 'node-b');
    nodes.push(b);
    const rows: Row[] = [];
    const local: Row[] = [];
    const fullMs = new Map<number, number>();
    for (const mib of SIZES_MIB) {
      const lazyName = `lazy${mib}`;
      const fullName = `full${mib}`;
      const spec = await imageSpec(dir, lazyName, mib);
      await a.backend.ensureImage(spec);
      const ref = await a.backend.exportImage(lazyName, { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: await freePort() }, allowedNodes: ['node-b'] });
      const t0 = process.hrtime.bigint();
    const lazy = await timeIt(async () => {
        await b.backend.ensureImage({ ...spec, peer: ref });
        return b.backend.ensureDisk({ id: `d-${lazyName}`, source: { kind: 'image', image: lazyName } });
      });
      await untilReady(b.backend, lazyName);
      const hydrateMs = Number(process.hrtime.bigint() - t0) / 1e6;
      const fullSpec = { ...(await imageSpec(dir, fullName, mib)) };
      const full = await timeIt(async () => {
        await b.backend.ensureImage(fullSpec);
        return b.backend.ensureDisk({ id: `d-${fullName}`, source: { kind: 'image', image: fullName } });
      });
      rows.push([`${b.tgt.version}`, mib, fmt(lazy.ms), fmt(full.ms), fmt(full.ms / lazy.ms), fmt(hydrateMs), fmt((mib * 1000) / hydrateMs)]);
      fullMs.set(mib, full.ms);
      for (const [n, id] of [[lazyName, `d-${lazyName}`], [fullName, `d-${fullName}`]] as const) {
        await b.backend.deleteDisk(id);
        await b.backend.deleteImage(n);
      }
      await a.backend.unexportImage(lazyName);
      await a.backend.deleteImage(lazyName);
    }
    // Node C (lazyLocal) runs alone: a third target polling the same core slowed the peers' TCP
    // connections on v24.01 beyond their deadlines.
    for (const n of nodes.splice(0).reverse()) {
      await n.backend.close().catch(() => undefined);
      await n.tgt.kill('SIGKILL');
    }
    const c = await node(bin, dir, 'node-c', true);
    nodes.push(c);
    for (const mib of SIZES_MIB) {
      const full = { ms: fullMs.get(mib) ?? NaN };
      // The same kind of file on node C with lazyLocal: the file becomes the lazy golden's source.
      const fileName = `file${mib}`;
      const fileSpec = await imageSpec(dir, fileName, mib);
      const t1 = process.hrtime.bigint();
      let phase = '';
      const fromFile = await timeIt(async () => {
        phase = (await c.backend.ensureImage(fileSpec)).phase;
        return c.backend.ensureDisk({ id: `d-${fileName}`, source: { kind: 'image', image: fileName } });
      });
      await untilReady(c.backend, fileName);
      const fileHydrateMs = Number(process.hrtime.bigint() - t1) / 1e6;
      local.push([`${c.tgt.version}`, mib, phase === 'hydrating' ? 'lazy' : `full import (${phase})`, fmt(fromFile.ms), fmt(full.ms), fmt(full.ms / fromFile.ms), fmt(fileHydrateMs)]);
      await c.backend.deleteDisk(`d-${fileName}`);
      // 'ready' shows once the golden exists; the hydration task then repoints and drops the file source.
      for (let i = 0; ; i++) {
        const err = await c.backend.deleteImage(fileName).then(() => undefined, (e: unknown) => e as Error);
        if (!err) break;
        if (i >= 600 || !/hydration is running/.test(err.message)) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    return { peer: rows, local };
  } finally {
    for (const n of nodes.reverse()) {
      await n.backend.close().catch(() => undefined);
      await n.tgt.kill('SIGKILL');
    }
    await fs.rm(dir, { recursive: true, force: true });
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
      const r = await benchTarget(t.bin);
      table.rows.push(...r.peer);
      fromFile.rows.push(...r.local);
    } catch (e) {
      table.rows.push([t.label, `failed: ${(e as Error).message.split('\n')[0] ?? ''}`, '-', '-', '-', '-', '-']);
    }
  }
  return { area: 'Lazy images on real SPDK', tables: [table, fromFile] };
}
