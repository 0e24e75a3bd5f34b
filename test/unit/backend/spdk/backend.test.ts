import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SpdkBackend, type SpdkBackendOptions } from '../../../../src/backend/spdk/index.js';
import { fetchImage } from '../../../../src/backend/image-source.js';
import { BackendError, type ImageSpec } from '../../../../src/backend/types.js';
import { SpdkApi } from '../../../../src/spdk/api.js';
import { SpdkRpcClient } from '../../../../src/spdk/client.js';
import { SpdkSimulator } from '../../../../testing/spdk-sim/index.js';
import { until } from '../../../helpers/process.js';

const MiB = 1024 * 1024;

interface Rig {
  dir: string;
  sim: SpdkSimulator;
  client: SpdkRpcClient;
  backend: SpdkBackend;
  paths: { socket: string; vhost: string; simState: string; state: string; lvsFile: string };
}

let rigs: Rig[] = [];

async function newSimulator(p: Rig['paths']): Promise<SpdkSimulator> {
  const sim = new SpdkSimulator({ socketPath: p.socket, vhostDir: p.vhost, stateDir: p.simState });
  await sim.start();
  return sim;
}

async function makeRig(opts: { lvsMiB?: number; fetch?: SpdkBackendOptions['fetchImage']; blockSize?: 512 | 4096 } = {}): Promise<Rig> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sb-'));
  const paths = {
    socket: path.join(dir, 'rpc.sock'),
    vhost: path.join(dir, 'vhost'),
    simState: path.join(dir, 'sim'),
    state: path.join(dir, 'state'),
    lvsFile: path.join(dir, 'lvs.img'),
  };
  await fs.mkdir(paths.vhost, { recursive: true });
  const sim = await newSimulator(paths);
  const client = new SpdkRpcClient({ socketPath: paths.socket, timeoutMs: 5_000, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
  const backend = new SpdkBackend({
    client,
    lvstore: { name: 'kvs', baseBdev: { kind: 'aio', filename: paths.lvsFile, sizeMiB: opts.lvsMiB ?? 256, ...(opts.blockSize ? { blockSize: opts.blockSize } : {}) } },
    vhostDir: paths.vhost,
    stateDir: paths.state,
    ...(opts.fetch ? { fetchImage: opts.fetch } : {}),
  });
  const rig = { dir, sim, client, backend, paths };
  rigs.push(rig);
  await backend.start();
  return rig;
}

/** A raw image file with recognisable content; 6 MiB + 512 B, not a multiple of a cluster. */
async function makeImage(dir: string, name: string, bytes = 6 * MiB + 512): Promise<ImageSpec> {
  const file = path.join(dir, `${name}-source.raw`);
  const data = Buffer.alloc(bytes, 0);
  data.write(`image ${name}`, 0);
  await fs.writeFile(file, data);
  const sha256 = createHash('sha256').update(data).digest('hex');
  return { name, format: 'raw', source: { hostPath: { path: file, sha256 } } };
}

beforeEach(() => {
  rigs = [];
});

afterEach(async () => {
  for (const r of rigs) {
    await r.backend.close().catch(() => undefined);
    await r.sim.stop().catch(() => undefined);
    await fs.rm(r.dir, { recursive: true, force: true });
  }
});

const lvolNamed = (r: Rig, name: string) => r.sim.snapshot().lvols.find((l) => l.name === name);

describe('SpdkBackend image cache', () => {
  it('imports an image into a read-only golden lvol and drops the aio bdev and file', async () => {
    const r = await makeRig();
    const spec = await makeImage(r.dir, 'fedora');
    const img = await r.backend.ensureImage(spec);
    expect(img).toMatchObject({ name: 'fedora', phase: 'ready', ref: 'kvs/img-fedora', cloneCount: 0 });
    // 6 MiB + 512 B rounds up to two 4 MiB clusters.
    expect(img.sizeBytes).toBe(8 * MiB);

    const snap = r.sim.snapshot();
    const golden = lvolNamed(r, 'img-fedora');
    expect(golden).toMatchObject({ readOnly: true, parent: null });
    expect(golden?.allocated).toBe(golden?.clusters); // hydrated: owns all its data
    expect(lvolNamed(r, 'img-fedora-importing')).toBeUndefined();
    expect(snap.bdevs.find((b) => b.name === 'img-fedora-src')).toBeUndefined();
    await expect(fs.stat(path.join(r.paths.state, 'images', 'fedora.raw'))).rejects.toThrow(/ENOENT/);
  });

  it('clones disks thin from the golden and counts them', async () => {
    const r = await makeRig();
    await r.backend.ensureImage(await makeImage(r.dir, 'fedora'));
    const d1 = await r.backend.ensureDisk({ id: 'vm1-root', source: { kind: 'image', image: 'fedora' }, capacityBytes: 20 * MiB });
    const d2 = await r.backend.ensureDisk({ id: 'vm2-root', source: { kind: 'image', image: 'fedora' }, capacityBytes: 6 * MiB + 512 });
    expect(d1).toMatchObject({ id: 'vm1-root', ref: 'kvs/vm1-root', image: 'fedora', owned: true, sizeBytes: 20 * MiB });
    expect(d2.sizeBytes).toBe(8 * MiB);

    const golden = lvolNamed(r, 'img-fedora');
    for (const id of ['vm1-root', 'vm2-root']) {
      const l = lvolNamed(r, id);
      expect(l).toMatchObject({ thin: true, allocated: 0, parent: { kind: 'snapshot', uuid: golden?.uuid } });
    }
    const state = await r.backend.observe();
    expect(state.images).toEqual([{ name: 'fedora', phase: 'ready', sizeBytes: 8 * MiB, ref: 'kvs/img-fedora', cloneCount: 2 }]);
    expect(state.disks.map((d) => [d.id, d.image, d.sizeBytes])).toEqual([
      ['vm1-root', 'fedora', 20 * MiB],
      ['vm2-root', 'fedora', 8 * MiB],
    ]);
  });

  it('is idempotent: a second ensureImage/ensureDisk changes nothing', async () => {
    const r = await makeRig();
    const spec = await makeImage(r.dir, 'fedora');
    await r.backend.ensureImage(spec);
    const disk = { id: 'vm1-root', source: { kind: 'image' as const, image: 'fedora' }, capacityBytes: 20 * MiB };
    await r.backend.ensureDisk(disk);
    const before = r.sim.snapshot().lvols.map((l) => [l.name, l.uuid]);
    const again = await r.backend.ensureImage(spec);
    const diskAgain = await r.backend.ensureDisk(disk);
    expect(again).toMatchObject({ phase: 'ready', cloneCount: 1 });
    expect(diskAgain).toMatchObject({ id: 'vm1-root', image: 'fedora', sizeBytes: 20 * MiB });
    expect(r.sim.snapshot().lvols.map((l) => [l.name, l.uuid])).toEqual(before);
  });

  it('redoes an import that crashed half-way instead of trusting it', async () => {
    const r = await makeRig();
    const spec = await makeImage(r.dir, 'fedora');
    // What a crash after bdev_lvol_clone_bdev leaves: the aio bdev and an esnap clone.
    const api = new SpdkApi(r.client);
    const source = spec.source as { hostPath: { path: string } };
    // The import pads its aio file to whole clusters (real SPDK refuses an esnap clone of any
    // other size), so the leftover clone is of a padded copy.
    const padded = `${source.hostPath.path}.padded`;
    await fs.copyFile(source.hostPath.path, padded);
    await fs.truncate(padded, 8 * MiB);
    await api.bdevAioCreate({ name: 'img-fedora-src', filename: padded, block_size: 512 });
    await api.bdevLvolCloneBdev({ bdev: 'img-fedora-src', lvs_name: 'kvs', clone_name: 'img-fedora-importing' });
    const stale = lvolNamed(r, 'img-fedora-importing');

    const seen = await r.backend.observe();
    expect(seen.images).toEqual([expect.objectContaining({ name: 'fedora', phase: 'failed' })]);
    await expect(
      r.backend.ensureDisk({ id: 'vm1-root', source: { kind: 'image', image: 'fedora' }, capacityBytes: 8 * MiB }),
    ).rejects.toMatchObject({ kind: 'notFound' });

    const img = await r.backend.ensureImage(spec);
    expect(img.phase).toBe('ready');
    const snap = r.sim.snapshot();
    expect(snap.lvols.map((l) => l.name)).toEqual(['img-fedora']);
    expect(snap.lvols.some((l) => l.uuid === stale?.uuid)).toBe(false);
    expect(snap.bdevs.find((b) => b.name === 'img-fedora-src')).toBeUndefined();
  });

  it('redoes an import whose spdk_tgt died during inflate (esnap clone left degraded)', async () => {
    const r = await makeRig();
    const spec = await makeImage(r.dir, 'fedora');
    r.sim.injectFault({ method: 'bdev_lvol_inflate', action: 'hang' });
    const importing = r.backend.ensureImage(spec);
    importing.catch(() => undefined);
    await until('the importing lvol', () => lvolNamed(r, 'img-fedora-importing'), 2_000, 10);

    const reconnected = new Promise<void>((resolve) => r.backend.once('connected', () => resolve()));
    await r.sim.stop();
    r.sim = await newSimulator(r.paths);
    await expect(importing).rejects.toBeInstanceOf(BackendError);
    await reconnected;

    // The new target re-creates no aio bdev for the image: the left-over clone is degraded.
    const seen = await r.backend.observe();
    expect(seen.images).toEqual([expect.objectContaining({ name: 'fedora', phase: 'failed' })]);
    expect(lvolNamed(r, 'img-fedora-importing')).toMatchObject({ degraded: true });

    const img = await r.backend.ensureImage(spec);
    expect(img.phase).toBe('ready');
    expect(r.sim.snapshot().lvols.map((l) => [l.name, l.readOnly, l.degraded])).toEqual([['img-fedora', true, false]]);
  });

  it('tidies a crash between the golden snapshot and the cleanup', async () => {
    const r = await makeRig();
    const spec = await makeImage(r.dir, 'fedora');
    await r.backend.ensureImage(spec);
    // Recreate what the last two cleanup steps remove: an empty clone named -importing.
    const api = new SpdkApi(r.client);
    await api.bdevLvolClone({ snapshot_name: 'kvs/img-fedora', clone_name: 'img-fedora-importing' });
    const goldenUuid = lvolNamed(r, 'img-fedora')?.uuid;
    expect((await r.backend.observe()).images).toEqual([expect.objectContaining({ name: 'fedora', phase: 'ready', cloneCount: 0 })]);

    await r.backend.ensureImage(spec);
    expect(r.sim.snapshot().lvols.map((l) => [l.name, l.uuid])).toEqual([['img-fedora', goldenUuid]]);
  });

  it('shares one import between concurrent callers', async () => {
    const fetchSpy = vi.fn(fetchImage);
    const r = await makeRig({ fetch: fetchSpy });
    const spec = await makeImage(r.dir, 'fedora');
    const results = await Promise.all([r.backend.ensureImage(spec), r.backend.ensureImage(spec), r.backend.ensureImage(spec)]);
    expect(fetchSpy).toHaveBeenCalledTimes(1);
    expect(new Set(results.map((i) => i.ref))).toEqual(new Set(['kvs/img-fedora']));
    expect(r.sim.snapshot().lvols.filter((l) => l.name.startsWith('img-'))).toHaveLength(1);
  });

  it('refuses a capacity smaller than the image and creates nothing', async () => {
    const r = await makeRig();
    await r.backend.ensureImage(await makeImage(r.dir, 'fedora'));
    const err = await r.backend
      .ensureDisk({ id: 'vm1-root', source: { kind: 'image', image: 'fedora' }, capacityBytes: 2 * MiB })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendError);
    expect(err).toMatchObject({ kind: 'invalid', message: expect.stringMatching(/smaller than the image/) });
    expect(lvolNamed(r, 'vm1-root')).toBeUndefined();
  });

  it('reports noSpace when the lvstore cannot hold the image, leaving no half-made import', async () => {
    const r = await makeRig({ lvsMiB: 16 });
    const spec = await makeImage(r.dir, 'big', 40 * MiB);
    await expect(r.backend.ensureImage(spec)).rejects.toMatchObject({ kind: 'noSpace' });
    const snap = r.sim.snapshot();
    expect(snap.lvols).toEqual([]);
    expect(snap.bdevs.find((b) => b.name === 'img-big-src')).toBeUndefined();
    expect((await r.backend.observe()).images).toEqual([expect.objectContaining({ name: 'big', phase: 'failed' })]);
  });

  it('refuses to delete an image while disks are cloned from it, then deletes it', async () => {
    const r = await makeRig();
    await r.backend.ensureImage(await makeImage(r.dir, 'fedora'));
    await r.backend.ensureDisk({ id: 'vm1-root', source: { kind: 'image', image: 'fedora' }, capacityBytes: 8 * MiB });
    await expect(r.backend.deleteImage('fedora')).rejects.toMatchObject({ kind: 'busy' });
    await r.backend.deleteDisk('vm1-root');
    await r.backend.deleteDisk('vm1-root'); // already gone: still fine
    await r.backend.deleteImage('fedora');
    expect(r.sim.snapshot().lvols).toEqual([]);
  });
});

describe('SpdkBackend disks', () => {
  it('creates blank disks thin and serves existing bdevs without owning them', async () => {
    const r = await makeRig();
    const blank = await r.backend.ensureDisk({ id: 'vm1-data', source: { kind: 'blank' }, capacityBytes: 10 * MiB });
    expect(blank).toMatchObject({ ref: 'kvs/vm1-data', sizeBytes: 12 * MiB, owned: true });
    expect(lvolNamed(r, 'vm1-data')).toMatchObject({ thin: true, allocated: 0 });

    await new SpdkApi(r.client).bdevMallocCreate({ name: 'Shared0', num_blocks: 2048, block_size: 4096 });
    const shared = await r.backend.ensureDisk({ id: 'vm1-shared', source: { kind: 'bdev', bdev: 'Shared0' } });
    expect(shared).toEqual({ id: 'vm1-shared', ref: 'Shared0', sizeBytes: 8 * MiB, dependents: 0, owned: false });
    await expect(r.backend.ensureDisk({ id: 'vm1-x', source: { kind: 'bdev', bdev: 'Nope0' } })).rejects.toMatchObject({
      kind: 'notFound',
    });
  });

  it('maps a full lvstore on resize to noSpace and deletes the clone it made', async () => {
    const r = await makeRig();
    await r.backend.ensureImage(await makeImage(r.dir, 'fedora'));
    r.sim.injectFault({ method: 'bdev_lvol_resize', times: 1, action: { code: -32602, message: 'No space left on device' } });
    await expect(
      r.backend.ensureDisk({ id: 'vm1-root', source: { kind: 'image', image: 'fedora' }, capacityBytes: 64 * MiB }),
    ).rejects.toMatchObject({ kind: 'noSpace' });
    expect(lvolNamed(r, 'vm1-root')).toBeUndefined();
  });

  it('provisions many disks concurrently sharing the lvol listings', async () => {
    const r = await makeRig();
    await r.backend.ensureImage(await makeImage(r.dir, 'fedora'));
    const call = vi.spyOn(r.client, 'call');
    const n = 40;
    const disks = await Promise.all(
      Array.from({ length: n }, (_, i) =>
        r.backend.ensureDisk({ id: `vm${i}-root`, source: { kind: 'image', image: 'fedora' }, capacityBytes: 16 * MiB }),
      ),
    );
    expect(new Set(disks.map((d) => d.ref)).size).toBe(n);
    const methods = call.mock.calls.map((c) => c[0]);
    const count = (m: string): number => methods.filter((x) => x === m).length;
    // Disk clones, one each; under load the golden also gets fan-outs to clone from in parallel.
    const clones = call.mock.calls.filter((c) => c[0] === 'bdev_lvol_clone').map((c) => String((c[1] as { clone_name: string }).clone_name));
    expect(clones.filter((x) => !x.startsWith('img-'))).toHaveLength(n);
    expect(clones.filter((x) => x.startsWith('img-fedora.f')).length).toBeLessThanOrEqual(3);
    expect(count('bdev_lvol_resize')).toBe(n);
    expect(count('bdev_lvol_get_lvols')).toBeLessThan(n / 4);
    expect(count('bdev_get_bdevs')).toBeLessThan(n / 4);
    const observed = await r.backend.observe();
    expect(observed.images[0]?.cloneCount).toBe(n);
    expect(observed.disks.map((d) => d.image)).toEqual(Array.from({ length: n }, () => 'fedora'));
    // Deleting the image later takes its fan-outs with it.
    await Promise.all(disks.map((d) => r.backend.deleteDisk(d.id)));
    await r.backend.deleteImage('fedora');
    expect((await r.backend.observe()).images).toEqual([]);
    expect(lvolNamed(r, 'img-fedora.f1')).toBeUndefined();
  });
});

describe('SpdkBackend controllers and recovery', () => {
  async function rigWithDisk(): Promise<Rig> {
    const r = await makeRig();
    await r.backend.ensureImage(await makeImage(r.dir, 'fedora'));
    await r.backend.ensureDisk({ id: 'vm1-root', source: { kind: 'image', image: 'fedora' }, capacityBytes: 8 * MiB });
    await r.backend.ensureDisk({ id: 'vm2-root', source: { kind: 'image', image: 'fedora' }, capacityBytes: 8 * MiB });
    return r;
  }

  it('creates the controller with its socket under <vhostDir>/<slot>/<disk>', async () => {
    const r = await rigWithDisk();
    const c = await r.backend.ensureController({ name: 'slot-07/rootdisk', diskRef: 'kvs/vm1-root', readonly: false });
    expect(c).toMatchObject({ name: 'slot-07/rootdisk', diskRef: 'kvs/vm1-root', readonly: false });
    expect(c.socketPath).toBe(path.join(r.paths.vhost, 'slot-07', 'rootdisk'));
    expect((await fs.stat(c.socketPath)).isSocket()).toBe(true);
    const again = await r.backend.ensureController({ name: 'slot-07/rootdisk', diskRef: 'kvs/vm1-root', readonly: false });
    expect(again).toMatchObject({ name: 'slot-07/rootdisk', diskRef: 'kvs/vm1-root' });
    expect(r.sim.snapshot().controllers).toHaveLength(1);
    expect((await r.backend.observe()).controllers).toEqual([
      { name: 'slot-07/rootdisk', diskRef: 'kvs/vm1-root', readonly: false, socketPath: c.socketPath, sessions: 0 },
    ]);
  });

  it('refuses a second controller on the same bdev, and a name reused for another bdev', async () => {
    const r = await rigWithDisk();
    await r.backend.ensureController({ name: 'slot-07/rootdisk', diskRef: 'kvs/vm1-root', readonly: false });
    await expect(
      r.backend.ensureController({ name: 'slot-08/rootdisk', diskRef: 'kvs/vm1-root', readonly: false }),
    ).rejects.toMatchObject({ kind: 'busy', message: expect.stringMatching(/already served by controller slot-07\/rootdisk/) });
    await expect(
      r.backend.ensureController({ name: 'slot-07/rootdisk', diskRef: 'kvs/vm2-root', readonly: false }),
    ).rejects.toMatchObject({ kind: 'busy' });
    await expect(
      r.backend.ensureController({ name: 'slot-09/x', diskRef: 'kvs/nope', readonly: false }),
    ).rejects.toMatchObject({ kind: 'notFound' });
    await r.backend.deleteController('slot-07/rootdisk');
    await r.backend.deleteController('slot-07/rootdisk');
    expect(r.sim.snapshot().controllers).toEqual([]);
  });

  it('after an spdk_tgt restart: lvstore back once the aio base is re-created, controllers re-made', async () => {
    const r = await rigWithDisk();
    await r.backend.ensureController({ name: 'slot-07/rootdisk', diskRef: 'kvs/vm1-root', readonly: false });
    const events: string[] = [];
    r.backend.on('connected', () => events.push('connected'));
    r.backend.on('disconnected', () => events.push('disconnected'));

    const reconnected = new Promise<void>((resolve) => r.backend.once('connected', () => resolve()));
    await r.sim.stop();
    r.sim = await newSimulator(r.paths);
    await reconnected;
    expect(events).toEqual(['disconnected', 'connected']);
    expect(r.sim.snapshot().lvstores).toEqual([]); // a fresh target knows nothing yet

    const state = await r.backend.observe();
    expect(state.images).toEqual([expect.objectContaining({ name: 'fedora', phase: 'ready', cloneCount: 2 })]);
    expect(state.disks.map((d) => d.id)).toEqual(['vm1-root', 'vm2-root']);
    expect(state.controllers).toEqual([]);

    const c = await r.backend.ensureController({ name: 'slot-07/rootdisk', diskRef: 'kvs/vm1-root', readonly: false });
    expect((await fs.stat(c.socketPath)).isSocket()).toBe(true);
    expect((await r.backend.observe()).controllers.map((x) => [x.name, x.diskRef])).toEqual([['slot-07/rootdisk', 'kvs/vm1-root']]);
  });

  it('refuses bdev: naming our own lvols, the lvstore base or an import source (a tenant would get our golden read-write)', async () => {
    const r = await rigWithDisk();
    const golden = (await new SpdkApi(r.client).bdevGetBdevs({ name: 'kvs/img-fedora' }))[0];
    for (const bdev of ['kvs/img-fedora', golden?.uuid ?? 'missing-uuid', 'kvs/vm1-root', 'kvs-base']) {
      const err = await r.backend.ensureDisk({ id: 'tenant-x', source: { kind: 'bdev', bdev } }).catch((e: unknown) => e);
      expect(err, bdev).toBeInstanceOf(BackendError);
      expect(err).toMatchObject({ kind: 'invalid', message: expect.stringMatching(/which this node's agent manages/) });
    }
    expect(lvolNamed(r, 'tenant-x')).toBeUndefined();
  });

  it('records the aio base it made (block size, name) and refuses a start that would re-create it differently', async () => {
    const r = await makeRig({ blockSize: 4096 });
    const record = JSON.parse(await fs.readFile(path.join(r.paths.state, 'lvstore-base.json'), 'utf8')) as unknown;
    expect(record).toEqual({ kind: 'aio', name: 'kvs-base', filename: r.paths.lvsFile, blockSize: 4096 });
    const other = new SpdkBackend({
      client: new SpdkRpcClient({ socketPath: r.paths.socket, timeoutMs: 5_000 }),
      lvstore: { name: 'kvs2', baseBdev: { kind: 'aio', filename: r.paths.lvsFile, sizeMiB: 256, blockSize: 512 } },
      vhostDir: r.paths.vhost,
      stateDir: r.paths.state,
    });
    await expect(other.start()).rejects.toMatchObject({ kind: 'invalid', message: expect.stringMatching(/created with block size 4096/) });
  });

  it('imports an image through an aio bdev of the lvstore\'s block size (4096 lvstore)', async () => {
    const r = await makeRig({ blockSize: 4096 });
    const sent: Array<Record<string, unknown> | undefined> = [];
    const call = r.client.call.bind(r.client);
    vi.spyOn(r.client, 'call').mockImplementation((method, params, opts) => {
      if (method === 'bdev_aio_create') sent.push(params);
      return call(method, params, opts);
    });
    const img = await r.backend.ensureImage(await makeImage(r.dir, 'fedora'));
    expect(img.phase).toBe('ready');
    expect(sent).toEqual([expect.objectContaining({ name: 'img-fedora-src', block_size: 4096 })]);
  });

  it('a clone lane deleted behind its back is dropped: the clone fails as busy (retried) and then works', async () => {
    const r = await makeRig();
    await r.backend.ensureImage(await makeImage(r.dir, 'fedora'));
    const burst = (tag: string) =>
      Promise.allSettled(Array.from({ length: 12 }, (_, i) => r.backend.ensureDisk({ id: `${tag}${i}`, source: { kind: 'image', image: 'fedora' } })));
    expect((await burst('a')).every((x) => x.status === 'fulfilled')).toBe(true);
    expect(lvolNamed(r, 'img-fedora.f1')).toBeDefined();
    for (let i = 0; i < 12; i++) await r.backend.deleteDisk(`a${i}`);
    await new SpdkApi(r.client).bdevLvolDelete({ name: 'kvs/img-fedora.f1' });
    const second = await burst('b');
    const failed = second.flatMap((x) => (x.status === 'rejected' ? [x.reason as BackendError] : []));
    expect(failed.length).toBeGreaterThan(0);
    expect(failed.every((e) => e.kind === 'busy' && /clone lane kvs\/img-fedora\.f1 is gone/.test(e.message))).toBe(true);
    const again = await Promise.all(Array.from({ length: 12 }, (_, i) => r.backend.ensureDisk({ id: `b${i}`, source: { kind: 'image', image: 'fedora' } })));
    expect(again).toHaveLength(12);
    expect((await r.backend.observe()).images[0]?.cloneCount).toBe(12);
  });

  it('reports health from spdk_get_version', async () => {
    const r = await makeRig();
    expect(await r.backend.health()).toMatchObject({ ok: true, kind: 'spdk', version: expect.stringMatching(/SPDK/) });
  });
});
