/**
 * Imports that run at once on one real spdk_tgt: the driver runs their inflates one after
 * another (SPDK skips the clusters of an inflate that overlaps another and the first read of
 * one crashes the target: docs/lazy-images-spdk.md). Every golden must hold every byte of its
 * file, read back through an NVMe-oF export of a disk with our own initiator.
 * Opt-in: SPDK_TGT (and SPDK_TGT_OLD for a second version).
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { ImageSpec } from '../../src/backend/types.js';
import { backendOnRealTarget, cases, freePort, readExport, realSpdkOrSkip } from './target.js';

const targets = realSpdkOrSkip('test/spdk/inflate.test.ts');
const MiB = 2 ** 20;
const IMAGE_BYTES = 32 * MiB;

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

async function image(dir: string, name: string): Promise<{ spec: ImageSpec; data: Buffer }> {
  const data = randomBytes(IMAGE_BYTES);
  const file = path.join(dir, `${name}.raw`);
  await fs.writeFile(file, data);
  return { data, spec: { name, format: 'raw', source: { hostPath: { path: file, sha256: createHash('sha256').update(data).digest('hex') } } } };
}

describe.skipIf(targets.length === 0).each(cases(targets))('imports at once on a real spdk_tgt ($label)', ({ bin }) => {
  it('three images imported at once: each golden holds all of its file, and the target lives', async () => {
    const { dir, backend, client, tgt } = await backendOnRealTarget(bin, { prefix: 'ki-', sizeMiB: 1024 }, cleanups);
    const images = await Promise.all(['one', 'two', 'three'].map((n) => image(dir, n)));
    const done = await Promise.all(images.map((i) => backend.ensureImage(i.spec)));
    expect(done.map((d) => d.phase)).toEqual(['ready', 'ready', 'ready']);
    // v24.09+ lists allocated clusters: a golden with fewer than all of them lost data.
    const lvols = (await client.call('bdev_lvol_get_lvols')) as Array<{ name: string; num_allocated_clusters?: number }>;
    for (const l of lvols.filter((x) => x.name.startsWith('img-'))) {
      if (l.num_allocated_clusters !== undefined) expect(l.num_allocated_clusters, l.name).toBe(IMAGE_BYTES / (4 * MiB));
    }
    for (const { spec, data } of images) {
      const id = `d-${spec.name}`;
      await backend.ensureDisk({ id, source: { kind: 'image', image: spec.name } });
      const ref = await backend.exportDisk(id, { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: await freePort() } });
      if (ref.transport !== 'nvmf-tcp') throw new Error('spdk exports NVMe-oF');
      const out = path.join(dir, `${id}.bin`);
      await readExport(bin, ref, IMAGE_BYTES, out, MiB);
      expect((await fs.readFile(out)).equals(data), spec.name).toBe(true);
      await backend.unexportDisk(id);
    }
    expect(tgt.crashed).toBeUndefined();
  });
});
