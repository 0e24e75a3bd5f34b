/**
 * The spdk backend in-process against a real spdk_tgt: provisioning many disks from one golden
 * without SPDK's "busy" (clones of one snapshot are queued), and an import interrupted by an
 * spdk_tgt restart (its external-snapshot clone must not stay degraded). Opt-in: SPDK_TGT.
 */
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { stableUuid } from '../../src/backend/spdk/backend.js';
import type { ImageSpec } from '../../src/backend/types.js';
import { createMetrics } from '../../src/metrics/metrics.js';
import { backendOnRealTarget, cases, readExport, realSpdkOrSkip, type BackendNode } from './target.js';

const targets = realSpdkOrSkip('test/spdk/backend.test.ts');
const MiB = 2 ** 20;

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

async function setup(bin: string): Promise<BackendNode & { metrics: ReturnType<typeof createMetrics> }> {
  const metrics = createMetrics();
  return { ...(await backendOnRealTarget(bin, { prefix: 'kb-', sizeMiB: 2048, metrics }, cleanups)), metrics };
}

async function imageFile(dir: string, bytes: number): Promise<ImageSpec> {
  const data = Buffer.alloc(bytes, 0);
  for (let i = 0; i < bytes; i += MiB) data.write(`MiB ${i / MiB}`, i);
  const file = path.join(dir, 'base-source.raw');
  await writeFile(file, data);
  return { name: 'base', format: 'raw', source: { hostPath: { path: file, sha256: createHash('sha256').update(data).digest('hex') } } };
}

type Lvol = { name: string; is_degraded?: boolean };
/** Controller names follow the node layout (contract/layout.ts): `slot-NN/<disk>`. */
const slotOf = (i: number): string => `slot-${String(i).padStart(2, '0')}`;

describe.skipIf(targets.length === 0).each(cases(targets))('spdk backend on a real spdk_tgt ($label)', ({ bin }) => {
  it('provisions 100 disks from one golden concurrently with no "busy" from SPDK (clones of a snapshot are queued)', async () => {
    const { dir, backend, metrics } = await setup(bin);
    await backend.ensureImage(await imageFile(dir, 8 * MiB));
    await Promise.all(
      Array.from({ length: 100 }, async (_, i) => {
        // Larger than the image: every clone is resized too (a metadata operation on the clone).
        const d = await backend.ensureDisk({ id: `vm${i}-root`, source: { kind: 'image', image: 'base' }, capacityBytes: 64 * MiB });
        await mkdir(path.join(backend.vhostDir, slotOf(i)), { recursive: true });
        await backend.ensureController({ name: `${slotOf(i)}/root`, diskRef: d.ref, readonly: false });
      }),
    );
    const observed = await backend.observe();
    expect(observed.controllers).toHaveLength(100);
    expect(observed.images).toEqual([expect.objectContaining({ name: 'base', cloneCount: 100 })]);
    const busy = (await metrics.spdkRpcErrors.get()).values.filter((v) => v.labels.kind === 'busy');
    expect(busy).toEqual([]);
    // Deleting them all at once is queued the same way.
    await Promise.all(Array.from({ length: 100 }, (_, i) => backend.deleteController(`${slotOf(i)}/root`).then(() => backend.deleteDisk(`vm${i}-root`))));
    expect((await backend.observe()).disks).toEqual([]);
    expect((await metrics.spdkRpcErrors.get()).values.filter((v) => v.labels.kind === 'busy')).toEqual([]);
  });

  it('an import cut by an spdk_tgt restart leaves nothing degraded: its source comes back by UUID (v24.09+) or the import is redone (v24.01)', async () => {
    const { dir, tgt, backend, client } = await setup(bin);
    const caps = backend.caps;
    expect(caps).toBeDefined();
    expect(caps?.aioUuid).toBe((caps?.major ?? 0) > 24 || ((caps?.major ?? 0) === 24 && (caps?.minor ?? 0) >= 9));
    // The state an import is in while it inflates: the downloaded file, its aio bdev, and an
    // esnap clone of it in the lvstore.
    const spec = await imageFile(dir, 8 * MiB);
    const file = path.join(dir, 'spdk', 'images', 'base.raw');
    await mkdir(path.dirname(file), { recursive: true });
    await copyFile(path.join(dir, 'base-source.raw'), file);
    await client.call('bdev_aio_create', { name: 'img-base-src', filename: file, block_size: 512, ...(caps?.aioUuid ? { uuid: stableUuid('kvs/base') } : {}) });
    await client.call('bdev_lvol_clone_bdev', { bdev: 'img-base-src', lvs_name: 'kvs', clone_name: 'img-base-importing' });

    const reconnected = new Promise<void>((resolve) => backend.once('connected', () => resolve()));
    await tgt.restart('SIGKILL');
    await reconnected;
    await backend.observe();
    const lvols = (await client.call('bdev_lvol_get_lvols')) as Lvol[];
    const importing = lvols.find((l) => l.name === 'img-base-importing');
    if (caps?.aioUuid) expect(importing).toMatchObject({ is_degraded: false });
    else expect(importing).toMatchObject({ is_degraded: true });

    const img = await backend.ensureImage(spec);
    expect(img).toMatchObject({ name: 'base', phase: 'ready' });
    const after = (await client.call('bdev_lvol_get_lvols')) as Lvol[];
    expect(after.map((l) => l.name)).toEqual(['img-base']);
    expect(after.filter((l) => l.is_degraded)).toEqual([]);
  });
});

describe.skipIf(targets.length === 0).each(cases(targets))('data through the disks on a real spdk_tgt ($label)', ({ bin }) => {
  for (const blockSize of [512, 4096] as const) {
    it(`disks cloned in parallel lanes (golden and fan-outs) read the image's bytes; lvstore of ${blockSize}-byte blocks`, async () => {
      const { dir, backend, client } = await backendOnRealTarget(bin, { prefix: 'kd-', sizeMiB: 1024, blockSize }, cleanups);
      // Not a multiple of a cluster nor of 4096: the tail is zero-padded in the lvstore.
      const image = Buffer.alloc(6 * MiB + 512, 0);
      for (let i = 0; i < image.length; i += 512) image.write(`sector ${i / 512}`, i);
      const src = path.join(dir, 'img.raw');
      await writeFile(src, image);
      await backend.ensureImage({ name: 'base', format: 'raw', source: { hostPath: { path: src, sha256: createHash('sha256').update(image).digest('hex') } } });
      const disks = await Promise.all(
        Array.from({ length: 12 }, (_, i) => backend.ensureDisk({ id: `vm${i}`, source: { kind: 'image', image: 'base' }, capacityBytes: 8 * MiB })),
      );
      const parents = await Promise.all(
        disks.map(async (d) => {
          const b = ((await client.call('bdev_get_bdevs', { name: d.ref })) as Array<{ driver_specific: { lvol?: { base_snapshot?: string } } }>)[0];
          return b?.driver_specific.lvol?.base_snapshot ?? '';
        }),
      );
      expect(new Set(parents).has('img-base')).toBe(true);
      const fromFanout = disks.find((_, i) => /^img-base\.f\d+$/.test(parents[i] ?? ''));
      expect(fromFanout, `parents: ${parents.join(', ')}`).toBeDefined();
      const fromGolden = disks[parents.indexOf('img-base')];
      const port = 20000 + Math.floor(Math.random() * 20000);
      for (const d of [fromGolden, fromFanout]) {
        if (!d) continue;
        const ref = await backend.exportDisk(d.id, { listenAddress: { kind: 'tcp', host: '127.0.0.1', port } });
        if (ref.transport !== 'nvmf-tcp') throw new Error(`unexpected export ${ref.transport}`);
        const out = path.join(dir, `${d.id}.out`);
        await readExport(bin, ref, image.length, out);
        const got = await readFile(out);
        expect(createHash('sha256').update(got.subarray(0, image.length)).digest('hex'), `${d.id} (${d.ref})`).toBe(createHash('sha256').update(image).digest('hex'));
        expect(got.subarray(image.length).every((b) => b === 0)).toBe(true);
        await backend.unexportDisk(d.id);
      }
    });
  }
});
