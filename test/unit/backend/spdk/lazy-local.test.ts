import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SpdkBackend } from '../../../../src/backend/spdk/index.js';
import { imageUuid } from '../../../../src/backend/spdk/image-export.js';
import type { ImageSpec, ObservedImage } from '../../../../src/backend/types.js';
import { SpdkRpcClient } from '../../../../src/spdk/client.js';
import { SpdkSimulator, type SpdkVersion } from '../../../../testing/spdk-sim/index.js';
import { until } from '../../../helpers/process.js';

/**
 * Lazy goldens over the node's own file (`lazyLocal`): on v24.09+ the aio bdev over the fetched
 * file gets the image id as uuid, disks clone the lazy golden at once, hydration copies the file
 * into the lvstore and then drops the aio bdev and the file; v24.01 imports in full.
 */
const MiB = 1024 * 1024;

interface Node {
  sim: SpdkSimulator;
  backend: SpdkBackend;
  paths: { socket: string; vhost: string; simState: string; state: string; lvsFile: string };
}

let dir: string;
let nodes: Node[];

async function startSim(paths: Node['paths'], version: SpdkVersion): Promise<SpdkSimulator> {
  const sim = new SpdkSimulator({ socketPath: paths.socket, vhostDir: paths.vhost, stateDir: paths.simState, version });
  await sim.start();
  return sim;
}

async function node(version: SpdkVersion, lazyLocal = true): Promise<Node> {
  const d = path.join(dir, `n${nodes.length}`);
  const paths = { socket: path.join(d, 'rpc.sock'), vhost: path.join(d, 'vhost'), simState: path.join(d, 'sim'), state: path.join(d, 'state'), lvsFile: path.join(d, 'lvs.img') };
  await fs.mkdir(paths.vhost, { recursive: true });
  const sim = await startSim(paths, version);
  const backend = new SpdkBackend({
    client: new SpdkRpcClient({ socketPath: paths.socket, timeoutMs: 5_000, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } }),
    lvstore: { name: 'kvs', baseBdev: { kind: 'aio', filename: paths.lvsFile, sizeMiB: 256, blockSize: 4096 } },
    vhostDir: paths.vhost,
    stateDir: paths.state,
    lazyLocal,
    // A held inflate (an injected hang) gives up soon; the next try answers.
    inflateTimeoutMs: 1_500,
  });
  const n = { sim, backend, paths };
  nodes.push(n);
  await backend.start();
  return n;
}

async function imageSpec(name: string, bytes = 8 * MiB + 4096): Promise<ImageSpec> {
  const file = path.join(dir, `${name}.raw`);
  const data = Buffer.alloc(bytes, 7);
  await fs.writeFile(file, data);
  return { name, format: 'raw', source: { hostPath: { path: file, sha256: createHash('sha256').update(data).digest('hex') } } };
}

const lvol = (n: Node, name: string) => n.sim.snapshot().lvols.find((l) => l.name === name);
const bdev = (n: Node, name: string) => n.sim.snapshot().bdevs.find((b) => b.name === name);
const imageOf = async (n: Node, image: string): Promise<ObservedImage | undefined> => (await n.backend.observe()).images.find((i) => i.name === image);
const exists = (f: string): Promise<boolean> => fs.stat(f).then(() => true, () => false);
const localRecord = (n: Node, image: string): string => path.join(n.paths.state, 'lazy', `local-${image}.json`);

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sll-'));
  nodes = [];
});

afterEach(async () => {
  for (const n of nodes) {
    await n.backend.close().catch(() => undefined);
    await n.sim.stop().catch(() => undefined);
  }
  await fs.rm(dir, { recursive: true, force: true });
});

describe('lazy golden over the node\'s file (v25.09)', () => {
  it('a disk is cloned before hydration ends; afterwards the lazy golden sits on the golden and the aio bdev and its file are gone', async () => {
    const n = await node('25.09');
    n.sim.injectFault({ method: 'bdev_lvol_inflate', action: 'hang' });
    const img = await n.backend.ensureImage(await imageSpec('img'));
    // Padded to whole clusters, as the aio bdev under an esnap clone must be.
    expect(img).toMatchObject({ name: 'img', phase: 'hydrating', ref: 'kvs/img-img.lazy', sizeBytes: 12 * MiB });
    expect(bdev(n, 'img-img-src')).toMatchObject({ kind: 'aio', uuid: imageUuid('img') });
    expect(await exists(localRecord(n, 'img'))).toBe(true);
    const disk = await n.backend.ensureDisk({ id: 'd-1', source: { kind: 'image', image: 'img' } });
    expect(disk).toMatchObject({ id: 'd-1', image: 'img' });
    expect(lvol(n, 'img-img')).toBeUndefined();

    await until('hydrated', async () => (await imageOf(n, 'img'))?.phase === 'ready', 20_000);
    await until('source dropped', async () => bdev(n, 'img-img-src') === undefined, 10_000);
    const snap = n.sim.snapshot();
    const lazy = lvol(n, 'img-img.lazy');
    expect(lazy?.parent).toMatchObject({ kind: 'snapshot' });
    expect(snap.lvols.find((l) => l.uuid === (lazy?.parent as { uuid: string }).uuid)?.name).toBe('img-img');
    expect(lvol(n, 'img-img.hyd')).toBeUndefined();
    await until('file and record gone', async () => !(await exists(localRecord(n, 'img'))), 10_000);
    expect(await fs.readdir(path.join(n.paths.state, 'images')).catch(() => [])).toEqual([]);
    expect(await imageOf(n, 'img')).toMatchObject({ phase: 'ready', cloneCount: 1 });
    await n.backend.deleteDisk('d-1');
    await n.backend.deleteImage('img');
    expect(n.sim.snapshot().lvols.filter((l) => l.name.startsWith('img-'))).toEqual([]);
  });

  it('an spdk_tgt restart mid-hydration: the aio bdev is made again with the same uuid (file checked first), the degraded lvols come back and hydration resumes', async () => {
    const n = await node('25.09');
    n.sim.injectFault({ method: 'bdev_lvol_inflate', action: 'hang' });
    await n.backend.ensureImage(await imageSpec('img'));
    await n.backend.ensureDisk({ id: 'd-2', source: { kind: 'image', image: 'img' } });
    await n.sim.kill();
    n.sim = await startSim(n.paths, '25.09');
    await until('ready after restart', async () => (await imageOf(n, 'img').catch(() => undefined))?.phase === 'ready', 20_000);
    expect(n.sim.snapshot().lvols.filter((l) => l.degraded)).toEqual([]);
    expect((await n.backend.observe()).disks.find((d) => d.id === 'd-2')).toMatchObject({ image: 'img' });
    await until('source dropped', async () => bdev(n, 'img-img-src') === undefined && !(await exists(localRecord(n, 'img'))), 10_000);
  });

  it('a file changed while spdk_tgt was down is not read again: hydration fails with a checksum error and nothing reads it', async () => {
    const n = await node('25.09');
    n.sim.injectFault({ method: 'bdev_lvol_inflate', action: 'hang', times: 100 });
    await n.backend.ensureImage(await imageSpec('img'));
    await n.backend.close();
    await n.sim.kill();
    const files = await fs.readdir(path.join(n.paths.state, 'images'));
    expect(files).toHaveLength(1);
    const fh = await fs.open(path.join(n.paths.state, 'images', files[0] ?? ''), 'r+');
    await fh.write(Buffer.from('tampered'), 0, 8, 4096);
    await fh.close();
    n.sim = await startSim(n.paths, '25.09');
    n.backend = new SpdkBackend({
      client: new SpdkRpcClient({ socketPath: n.paths.socket, timeoutMs: 5_000 }),
      lvstore: { name: 'kvs', baseBdev: { kind: 'aio', filename: n.paths.lvsFile, sizeMiB: 256, blockSize: 4096 } },
      vhostDir: n.paths.vhost,
      stateDir: n.paths.state,
      lazyLocal: true,
    });
    await n.backend.start();
    await until('failed', async () => (await imageOf(n, 'img'))?.phase === 'failed', 10_000);
    expect((await imageOf(n, 'img'))?.message).toMatch(/sha256/);
    expect(bdev(n, 'img-img-src')).toBeUndefined();
  });

  it('a wrong sha256 leaves nothing behind (no lazy golden, no aio bdev, no file)', async () => {
    const n = await node('25.09');
    const spec = await imageSpec('img');
    const bad: ImageSpec = { ...spec, source: { hostPath: { path: (spec.source as { hostPath: { path: string } }).hostPath.path, sha256: '0'.repeat(64) } } };
    await expect(n.backend.ensureImage(bad)).rejects.toMatchObject({ kind: 'checksum' });
    expect(lvol(n, 'img-img.lazy')).toBeUndefined();
    expect(bdev(n, 'img-img-src')).toBeUndefined();
    expect(await exists(localRecord(n, 'img'))).toBe(false);
    expect(await fs.readdir(path.join(n.paths.state, 'images')).catch(() => [])).toEqual([]);
  });

  it('without lazyLocal the file is imported in full', async () => {
    const n = await node('25.09', false);
    expect(await n.backend.ensureImage(await imageSpec('img'))).toMatchObject({ phase: 'ready', ref: 'kvs/img-img' });
    expect(lvol(n, 'img-img.lazy')).toBeUndefined();
  });
});

describe('lazy golden over the node\'s file on v24.01', () => {
  it('falls back to the full import (an aio bdev gets a new uuid on every create)', async () => {
    const n = await node('24.01');
    expect(await n.backend.ensureImage(await imageSpec('img'))).toMatchObject({ phase: 'ready', ref: 'kvs/img-img' });
    expect(lvol(n, 'img-img.lazy')).toBeUndefined();
    expect(bdev(n, 'img-img-src')).toBeUndefined();
    expect(await exists(localRecord(n, 'img'))).toBe(false);
  });
});
