/**
 * Lazy goldens over the node's own file (`lazyLocal`) on a real spdk_tgt: on v24.09+ a disk is
 * Ready and reads the file's bytes before any of them is in the lvstore, an spdk_tgt restart
 * in the middle of hydration brings the degraded lvols back (the aio bdev is made again with
 * the same uuid), and after hydration the aio bdev and the file are gone and every byte reads
 * back from the lvstore. On v24.01 the same spec is imported in full.
 *
 * Hydration is held by gating the one `bdev_lvol_inflate` call on the client side until the
 * test lets it go: the target does everything else for real, and "while hydrating" is then a
 * state, not a race. Data is read back with spdk_dd over an NVMe-oF export of the disk.
 * Opt-in: SPDK_TGT (and SPDK_TGT_OLD for a second version).
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { imageUuid } from '../../src/backend/spdk/image-export.js';
import type { ImageSpec, ObservedImage } from '../../src/backend/types.js';
import { SpdkApi } from '../../src/spdk/api.js';
import type { CallOptions } from '../../src/spdk/client.js';
import { until } from '../helpers/process.js';
import { backendOnRealTarget, cases, freePort, readExport, realSpdkOrSkip, type BackendNode } from './target.js';

const targets = realSpdkOrSkip('test/spdk/lazy-local.test.ts');
const MiB = 2 ** 20;
const IMAGE_BYTES = 256 * MiB;

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

/** bdev_lvol_inflate waits for `open()` (the rest of the API is the real one). */
class GatedApi extends SpdkApi {
  private release: (() => void) | undefined;
  private gate: Promise<void> = new Promise((r) => (this.release = r));
  inflates = 0;
  open(): void {
    this.release?.();
  }
  override async bdevLvolInflate(p: Parameters<SpdkApi['bdevLvolInflate']>[0], opts?: CallOptions): ReturnType<SpdkApi['bdevLvolInflate']> {
    this.inflates++;
    await this.gate;
    return super.bdevLvolInflate(p, opts);
  }
}

type Node = BackendNode & { api: GatedApi };

async function node(bin: string): Promise<Node> {
  let api: GatedApi | undefined;
  const n = await backendOnRealTarget(
    bin,
    {
      prefix: 'kll-',
      sizeMiB: 1024,
      blockSize: 4096,
      timeoutMs: 120_000,
      lazyLocal: true,
      api: (client) => {
        api = new GatedApi(client);
        const gated = api;
        // An inflate held at close must not keep the backend from closing.
        return { api: gated, release: () => gated.open() };
      },
    },
    cleanups,
  );
  if (!api) throw new Error('no api');
  return { ...n, api };
}

async function imageFile(dir: string): Promise<{ spec: ImageSpec; data: Buffer }> {
  const data = randomBytes(IMAGE_BYTES);
  const file = path.join(dir, 'image.raw');
  await fs.writeFile(file, data);
  return { data, spec: { name: 'img', format: 'raw', source: { hostPath: { path: file, sha256: createHash('sha256').update(data).digest('hex') } } } };
}

async function readDisk(bin: string, n: Node, id: string, bytes: number): Promise<Buffer> {
  const ref = await n.backend.exportDisk(id, { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: await freePort() } });
  if (ref.transport !== 'nvmf-tcp') throw new Error('spdk exports NVMe-oF');
  const out = path.join(n.dir, `${id}-${Date.now()}.bin`);
  try {
    await readExport(bin, ref, bytes, out, bytes >= MiB ? MiB : 4096);
    return (await fs.readFile(out)).subarray(0, bytes);
  } finally {
    await n.backend.unexportDisk(id);
    await fs.rm(out, { force: true });
  }
}

const imageOf = async (n: Node, image: string): Promise<ObservedImage | undefined> => (await n.backend.observe()).images.find((i) => i.name === image);
const sourceBdev = async (n: Node): Promise<{ name: string; uuid: string } | undefined> =>
  ((await n.client.call('bdev_get_bdevs')) as Array<{ name: string; uuid: string }>).find((b) => b.name === 'img-img-src');
const degraded = async (n: Node): Promise<string[]> =>
  ((await n.client.call('bdev_lvol_get_lvols')) as Array<{ name: string; is_degraded?: boolean }>).filter((l) => l.is_degraded === true).map((l) => l.name);
const version = async (n: Node): Promise<{ major: number; minor: number }> => ((await n.client.call('spdk_get_version')) as { fields: { major: number; minor: number } }).fields;
const stableAio = (v: { major: number; minor: number }): boolean => v.major > 24 || (v.major === 24 && v.minor >= 9);

describe.skipIf(targets.length === 0).each(cases(targets))('lazy golden over the node\'s file on a real spdk_tgt ($label)', ({ bin }) => {
  it('v24.09+: a disk is Ready and reads the file at once; hydration survives an spdk_tgt restart, then the aio bdev is gone and every byte reads back', async (t) => {
    const n = await node(bin);
    if (!stableAio(await version(n))) t.skip();
    const { spec, data } = await imageFile(n.dir);

    const img = await n.backend.ensureImage(spec);
    expect(img).toMatchObject({ phase: 'hydrating', ref: 'kvs/img-img.lazy', sizeBytes: IMAGE_BYTES });
    expect(await sourceBdev(n)).toMatchObject({ uuid: imageUuid('img') });
    await n.backend.ensureDisk({ id: 'd-lazy', source: { kind: 'image', image: 'img' }, capacityBytes: IMAGE_BYTES });
    // Nothing is in the lvstore yet (the inflate waits at the gate): these bytes come from the file.
    await until('hydration waits at the gate', () => Promise.resolve(n.api.inflates > 0), 30_000);
    expect((await readDisk(bin, n, 'd-lazy', 64 * 1024)).equals(data.subarray(0, 64 * 1024))).toBe(true);
    expect(await imageOf(n, 'img')).toMatchObject({ phase: 'hydrating' });

    // spdk_tgt dies mid-hydration: the lazy lvols load degraded until the backend makes the aio
    // bdev over the (re-checked) file again with the same uuid.
    await n.tgt.restart();
    await until('lvols back', async () => (await imageOf(n, 'img').catch(() => undefined))?.phase === 'hydrating' && (await degraded(n)).length === 0, 60_000);
    expect(await sourceBdev(n)).toMatchObject({ uuid: imageUuid('img') });
    n.api.open();
    await until('hydrated', async () => (await imageOf(n, 'img').catch(() => undefined))?.phase === 'ready', 170_000);
    await until('file source dropped', async () => (await sourceBdev(n)) === undefined, 30_000);
    // The file goes right after its aio bdev.
    await until('file removed', async () => (await fs.readdir(path.join(n.dir, 'spdk', 'images')).catch(() => [])).length === 0, 10_000);

    const all = await readDisk(bin, n, 'd-lazy', IMAGE_BYTES);
    expect(all.equals(data)).toBe(true);
    expect(await imageOf(n, 'img')).toMatchObject({ phase: 'ready', cloneCount: 1 });
  });

  it('v24.01: the file is imported in full (an aio bdev gets a new uuid on every create)', async (t) => {
    const n = await node(bin);
    if (stableAio(await version(n))) t.skip();
    n.api.open();
    const { spec, data } = await imageFile(n.dir);
    expect(await n.backend.ensureImage(spec)).toMatchObject({ phase: 'ready', ref: 'kvs/img-img' });
    expect(await sourceBdev(n)).toBeUndefined();
    await n.backend.ensureDisk({ id: 'd-full', source: { kind: 'image', image: 'img' } });
    expect((await readDisk(bin, n, 'd-full', 64 * 1024)).equals(data.subarray(0, 64 * 1024))).toBe(true);
  });
});
