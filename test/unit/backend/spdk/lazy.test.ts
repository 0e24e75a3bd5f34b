import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SpdkBackend } from '../../../../src/backend/spdk/index.js';
import { hostNqnOf, imageExportNqn } from '../../../../src/backend/remote.js';
import type { ImageSpec, ObservedImage } from '../../../../src/backend/types.js';
import { SpdkRpcClient } from '../../../../src/spdk/client.js';
import { NvmfFabric, SpdkSimulator, type SpdkVersion } from '../../../../testing/spdk-sim/index.js';
import { until } from '../../../helpers/process.js';

/**
 * Lazy goldens from a peer, image exports and lazy disks, on two simulated nodes (A serves,
 * B reads) joined by one NVMe-oF fabric, each behind a real SpdkBackend.
 */
const MiB = 1024 * 1024;

interface Node {
  name: string;
  dir: string;
  sim: SpdkSimulator;
  backend: SpdkBackend;
  paths: { socket: string; vhost: string; simState: string; state: string; lvsFile: string };
}

let dir: string;
let nodes: Node[];
let fabric: NvmfFabric;

async function startSim(n: Pick<Node, 'paths'>, version: SpdkVersion): Promise<SpdkSimulator> {
  const sim = new SpdkSimulator({ socketPath: n.paths.socket, vhostDir: n.paths.vhost, stateDir: n.paths.simState, fabric, version, detachTimeoutMs: 100 });
  await sim.start();
  return sim;
}

async function node(name: string, version: SpdkVersion = '25.09'): Promise<Node> {
  const d = path.join(dir, name);
  const paths = { socket: path.join(d, 'rpc.sock'), vhost: path.join(d, 'vhost'), simState: path.join(d, 'sim'), state: path.join(d, 'state'), lvsFile: path.join(d, 'lvs.img') };
  await fs.mkdir(paths.vhost, { recursive: true });
  const sim = await startSim({ paths }, version);
  const client = new SpdkRpcClient({ socketPath: paths.socket, timeoutMs: 5_000, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
  const backend = new SpdkBackend({
    client,
    nodeName: name,
    lvstore: { name: 'kvs', baseBdev: { kind: 'aio', filename: paths.lvsFile, sizeMiB: 256, blockSize: 4096 } },
    vhostDir: paths.vhost,
    stateDir: paths.state,
    // A held inflate (an injected hang) gives up soon; the next try answers.
    inflateTimeoutMs: 1_500,
  });
  const n = { name, dir: d, sim, backend, paths };
  nodes.push(n);
  await backend.start();
  return n;
}

async function imageSpec(name: string, bytes = 8 * MiB): Promise<ImageSpec> {
  const file = path.join(dir, `${name}.raw`);
  const data = Buffer.alloc(bytes, 7);
  await fs.writeFile(file, data);
  return { name, format: 'raw', source: { hostPath: { path: file, sha256: createHash('sha256').update(data).digest('hex') } } };
}

const lvols = (n: Node) => n.sim.snapshot().lvols;
const lvol = (n: Node, name: string) => lvols(n).find((l) => l.name === name);
const nvmeControllers = (n: Node): Promise<string[]> => Promise.resolve(n.sim.snapshot().nvmeControllers.map((c) => c.name));
const imageOf = async (n: Node, image: string): Promise<ObservedImage | undefined> => (await n.backend.observe()).images.find((i) => i.name === image);

/** A holds image `img` and exports it to B (and whoever else is named). */
async function aServes(peers: string[]): Promise<{ a: Node; spec: ImageSpec; ref: Awaited<ReturnType<SpdkBackend['exportImage']>> }> {
  const a = await node('node-a');
  const spec = await imageSpec('img');
  await a.backend.ensureImage(spec);
  const ref = await a.backend.exportImage('img', { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: 4420 }, allowedNodes: peers });
  return { a, spec, ref };
}

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'slz-'));
  nodes = [];
  fabric = new NvmfFabric();
});

afterEach(async () => {
  for (const n of nodes) {
    await n.backend.close().catch(() => undefined);
    await n.sim.stop().catch(() => undefined);
  }
  await fs.rm(dir, { recursive: true, force: true });
});

describe('exportImage', () => {
  it('serves the golden read-only to the named peers only, with the image id as namespace id; the allowed set is replaced on each call', async () => {
    const { a, ref } = await aServes(['node-b']);
    expect(ref).toMatchObject({ transport: 'nvmf-tcp', host: '127.0.0.1', port: 4420, subnqn: imageExportNqn('img'), sizeBytes: 8 * MiB });
    const sub = () => a.sim.snapshot().subsystems.find((s) => s.nqn === imageExportNqn('img'));
    expect(sub()).toMatchObject({ allowAnyHost: false, hosts: [hostNqnOf('node-b')] });
    await a.backend.exportImage('img', { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: 4420 }, allowedNodes: ['node-c'] });
    expect(sub()?.hosts).toEqual([hostNqnOf('node-c')]);
    // A node not named cannot read it.
    const b = await node('node-b');
    await expect(b.backend.ensureImage({ ...(await imageSpec('img')), peer: ref })).rejects.toMatchObject({ kind: 'transport' });
    expect(lvol(b, 'img-img.lazy')).toBeUndefined();
    // While exported the golden cannot be deleted; unexport, then it can.
    await expect(a.backend.deleteImage('img')).rejects.toMatchObject({ kind: 'busy' });
    await a.backend.unexportImage('img');
    await a.backend.unexportImage('img');
    expect(sub()).toBeUndefined();
    await a.backend.deleteImage('img');
  });

  it('refuses an image that is not cached and a unix address', async () => {
    const a = await node('node-a');
    await expect(a.backend.exportImage('nope', { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: 4420 }, allowedNodes: [] })).rejects.toMatchObject({ kind: 'notFound' });
    await expect(a.backend.exportImage('nope', { listenAddress: { kind: 'unix', path: '/tmp/x' }, allowedNodes: [] })).rejects.toMatchObject({ kind: 'invalid' });
  });
});

describe('lazy golden from a peer', () => {
  it('a disk is cloned before hydration ends; hydration makes the golden local, repoints the lazy golden onto it and detaches the peer', async () => {
    const { a, spec, ref } = await aServes(['node-b']);
    const b = await node('node-b');
    // Hold hydration: the first inflate on B never answers (the client gives up after its timeout).
    b.sim.injectFault({ method: 'bdev_lvol_inflate', action: 'hang' });
    const img = await b.backend.ensureImage({ ...spec, peer: ref });
    expect(img).toMatchObject({ name: 'img', phase: 'hydrating', ref: 'kvs/img-img.lazy', sizeBytes: 8 * MiB });
    const disk = await b.backend.ensureDisk({ id: 'd-1', source: { kind: 'image', image: 'img' }, capacityBytes: 16 * MiB });
    expect(disk).toMatchObject({ id: 'd-1', image: 'img', ref: 'kvs/d-1' });
    expect(await imageOf(b, 'img')).toMatchObject({ phase: 'hydrating', cloneCount: 1 });
    expect(lvol(b, 'img-img')).toBeUndefined();
    expect(await nvmeControllers(b)).toEqual(['lzi-img']);
    // The next inflate answers: the golden appears, the peer is let go.
    await until('condition', async () => (await imageOf(b, 'img'))?.phase === 'ready', 20_000);
    await until('condition', async () => (await nvmeControllers(b)).length === 0, 10_000);
    const snap = b.sim.snapshot();
    const byUuid = new Map(snap.lvols.map((l) => [l.uuid, l]));
    const lazy = lvol(b, 'img-img.lazy');
    expect(lazy?.parent).toMatchObject({ kind: 'snapshot' });
    expect(byUuid.get((lazy?.parent as { uuid: string }).uuid)?.name).toBe('img-img');
    expect(lvol(b, 'img-img.hyd')).toBeUndefined();
    expect(await imageOf(b, 'img')).toMatchObject({ phase: 'ready', cloneCount: 1 });
    // A can stop serving; B's disk keeps its image, and deleting the image waits for the disk.
    await a.backend.unexportImage('img');
    await expect(b.backend.deleteImage('img')).rejects.toMatchObject({ kind: 'busy' });
    await b.backend.deleteDisk('d-1');
    await b.backend.deleteImage('img');
    expect(lvols(b).filter((l) => l.name.startsWith('img-'))).toEqual([]);
  });

  it('a peer export whose namespace id is not the image id is refused', async () => {
    const { spec, ref } = await aServes(['node-b']);
    const b = await node('node-b');
    await expect(b.backend.ensureImage({ ...spec, name: 'other', peer: ref })).rejects.toMatchObject({ kind: 'invalid' });
  });

  it('an spdk_tgt restart of B mid-hydration: the lazy lvols come back (source re-attached by its record) and hydration resumes', async () => {
    const { spec, ref } = await aServes(['node-b']);
    const b = await node('node-b');
    b.sim.injectFault({ method: 'bdev_lvol_inflate', action: 'hang' });
    await b.backend.ensureImage({ ...spec, peer: ref });
    await b.backend.ensureDisk({ id: 'd-2', source: { kind: 'image', image: 'img' } });
    await b.sim.kill();
    b.sim = await startSim(b, '25.09');
    await until('condition', async () => (await imageOf(b, 'img').catch(() => undefined))?.phase === 'ready', 20_000);
    expect(lvols(b).filter((l) => l.degraded)).toEqual([]);
    expect((await b.backend.observe()).disks.find((d) => d.id === 'd-2')).toMatchObject({ image: 'img' });
    await until('condition', async () => (await nvmeControllers(b)).length === 0, 10_000);
  });

  it('a peer that goes away pauses hydration (reported, not failed); once it serves again hydration completes', async () => {
    const { a, spec, ref } = await aServes(['node-b']);
    const b = await node('node-b');
    b.sim.injectFault({ method: 'bdev_lvol_inflate', action: 'hang' });
    await b.backend.ensureImage({ ...spec, peer: ref });
    await b.backend.ensureDisk({ id: 'd-5', source: { kind: 'image', image: 'img' } });
    await a.backend.close();
    await a.sim.kill();
    await until('paused', async () => (await imageOf(b, 'img'))?.message?.startsWith('hydration paused') === true, 10_000);
    expect(await imageOf(b, 'img')).toMatchObject({ phase: 'hydrating' });
    expect(await b.backend.hydrateDisk('d-5')).toMatchObject({ id: 'd-5', state: 'paused' });
    // A comes back (same lvstore) and its agent exports the image again.
    a.sim = await startSim(a, '25.09');
    const client = new SpdkRpcClient({ socketPath: a.paths.socket, timeoutMs: 5_000 });
    a.backend = new SpdkBackend({ client, nodeName: 'node-a', lvstore: { name: 'kvs', baseBdev: { kind: 'aio', filename: a.paths.lvsFile, sizeMiB: 256, blockSize: 4096 } }, vhostDir: a.paths.vhost, stateDir: a.paths.state });
    await a.backend.start();
    await a.backend.exportImage('img', { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: 4420 }, allowedNodes: ['node-b'] });
    await until('ready', async () => (await imageOf(b, 'img'))?.phase === 'ready', 20_000);
    expect(await b.backend.hydrateDisk('d-5')).toMatchObject({ state: 'standalone' });
  }, 60_000);

  it('v24.01 (no set_parent): the golden is hydrated beside the lazy golden, which its disks keep and which is then inflated in place', async () => {
    const a = await node('node-a', '24.01');
    const spec = await imageSpec('img');
    await a.backend.ensureImage(spec);
    const ref = await a.backend.exportImage('img', { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: 4420 }, allowedNodes: ['node-b'] });
    const b = await node('node-b', '24.01');
    await b.backend.ensureImage({ ...spec, peer: ref });
    await b.backend.ensureDisk({ id: 'd-3', source: { kind: 'image', image: 'img' } });
    await until('condition', async () => (await imageOf(b, 'img'))?.phase === 'ready', 20_000);
    await until('condition', async () => (await nvmeControllers(b)).length === 0, 10_000);
    expect(lvol(b, 'img-img')).toBeDefined();
    expect(lvol(b, 'img-img.lazy')?.parent ?? null).toBeNull();
    expect(await imageOf(b, 'img')).toMatchObject({ phase: 'ready', cloneCount: 1 });
    // A new disk clones the local golden.
    expect(await b.backend.ensureDisk({ id: 'd-4', source: { kind: 'image', image: 'img' } })).toMatchObject({ image: 'img' });
  });
});

describe('lazy disks over another node (cloneRemoteDisk, hydrateDisk)', () => {
  it('writes are local from the start; hydrateDisk copies, repoints onto a local snapshot and detaches; idempotent; deleteDisk removes the helpers', async () => {
    const { a } = await aServes([]);
    await a.backend.ensureDisk({ id: 'd-9', source: { kind: 'image', image: 'img' } });
    const ref = await a.backend.exportDisk('d-9', { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: 4430 } });
    const b = await node('node-b');
    const disk = await b.backend.cloneRemoteDisk(ref, 'd-9');
    expect(disk).toMatchObject({ id: 'd-9', ref: 'kvs/d-9', owned: true, sizeBytes: ref.sizeBytes });
    expect(await b.backend.cloneRemoteDisk(ref, 'd-9')).toMatchObject({ id: 'd-9', ref: 'kvs/d-9' });
    expect(lvol(b, 'd-9')?.parent).toMatchObject({ kind: 'esnap' });
    expect((await b.backend.hydrateDisk('d-9')).state).not.toBe('standalone');
    await until('condition', async () => (await b.backend.hydrateDisk('d-9')).state === 'standalone', 20_000);
    expect(await nvmeControllers(b)).toEqual([]);
    const base = lvol(b, 'd-9.hsnap');
    expect(lvol(b, 'd-9')?.parent).toEqual({ kind: 'snapshot', uuid: base?.uuid });
    // The source can go: B's disk does not need it.
    await a.backend.unexportDisk('d-9');
    await a.backend.deleteDisk('d-9');
    expect((await b.backend.observe()).disks.map((d) => d.id)).toEqual(['d-9']);
    await b.backend.deleteDisk('d-9');
    expect(lvols(b)).toEqual([]);
  });

  it('a disk with no remote source is standalone at once; a clone of a hydrating lazy golden reports the image', async () => {
    const b = await node('node-b');
    await b.backend.ensureDisk({ id: 'd-blank', source: { kind: 'blank' }, capacityBytes: 8 * MiB });
    expect(await b.backend.hydrateDisk('d-blank')).toEqual({ id: 'd-blank', state: 'standalone', percent: 100 });
    await expect(b.backend.hydrateDisk('d-none')).rejects.toMatchObject({ kind: 'notFound' });
  });

  it('reserved helper names are refused as disk ids', async () => {
    const b = await node('node-b');
    await expect(async () => b.backend.ensureDisk({ id: 'x.hsnap', source: { kind: 'blank' }, capacityBytes: MiB })).rejects.toMatchObject({ kind: 'invalid' });
  });
});
