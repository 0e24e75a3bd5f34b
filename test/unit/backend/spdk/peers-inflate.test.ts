import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SpdkBackend } from '../../../../src/backend/spdk/index.js';
import type { ImageSpec, ObservedImage, RemoteDiskRef } from '../../../../src/backend/types.js';
import { SpdkRpcClient } from '../../../../src/spdk/client.js';
import { NvmfFabric, SpdkSimulator, type SpdkVersion } from '../../../../testing/spdk-sim/index.js';
import { until } from '../../../helpers/process.js';

/**
 * The spdk driver on simulated nodes joined by one NVMe-oF fabric: how many peers read an
 * exported golden (`peerReaders`, from nvmf_subsystem_get_controllers), and one inflate at a
 * time per target (real SPDK loses the clusters of an inflate that overlaps another).
 */
const MiB = 1024 * 1024;

interface Node {
  name: string;
  sim: SpdkSimulator;
  backend: SpdkBackend;
  crashes: string[];
  paths: { socket: string; vhost: string; simState: string; state: string; lvsFile: string };
}

let dir: string;
let nodes: Node[];
let fabric: NvmfFabric;

async function startSim(n: Pick<Node, 'paths' | 'crashes'>, version: SpdkVersion): Promise<SpdkSimulator> {
  const sim: SpdkSimulator = new SpdkSimulator({
    socketPath: n.paths.socket,
    vhostDir: n.paths.vhost,
    stateDir: n.paths.simState,
    fabric,
    version,
    detachTimeoutMs: 100,
    onCrash: async () => {
      n.crashes.push('crashed');
      await sim.kill();
    },
  });
  await sim.start();
  return sim;
}

function backendOf(name: string, paths: Node['paths']): SpdkBackend {
  const client = new SpdkRpcClient({ socketPath: paths.socket, timeoutMs: 5_000, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
  return new SpdkBackend({
    client,
    nodeName: name,
    lvstore: { name: 'kvs', baseBdev: { kind: 'aio', filename: paths.lvsFile, sizeMiB: 256, blockSize: 4096 } },
    vhostDir: paths.vhost,
    stateDir: paths.state,
    // A held inflate (an injected hang) gives up soon; the next try answers.
    inflateTimeoutMs: 1_500,
  });
}

async function node(name: string, version: SpdkVersion): Promise<Node> {
  const d = path.join(dir, name);
  const paths = { socket: path.join(d, 'rpc.sock'), vhost: path.join(d, 'vhost'), simState: path.join(d, 'sim'), state: path.join(d, 'state'), lvsFile: path.join(d, 'lvs.img') };
  await fs.mkdir(paths.vhost, { recursive: true });
  const crashes: string[] = [];
  const sim = await startSim({ paths, crashes }, version);
  const n: Node = { name, sim, backend: backendOf(name, paths), crashes, paths };
  nodes.push(n);
  await n.backend.start();
  return n;
}

async function imageSpec(name: string, bytes = 8 * MiB): Promise<ImageSpec> {
  const file = path.join(dir, `${name}.raw`);
  const data = Buffer.alloc(bytes, 7);
  await fs.writeFile(file, data);
  return { name, format: 'raw', source: { hostPath: { path: file, sha256: createHash('sha256').update(data).digest('hex') } } };
}

const imageOf = async (n: Node, image: string): Promise<ObservedImage | undefined> => (await n.backend.observe()).images.find((i) => i.name === image);
const exportTo = (n: Node, image: string, peers: string[]): Promise<RemoteDiskRef> =>
  n.backend.exportImage(image, { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: 4420 }, allowedNodes: peers });

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'spi-'));
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

describe.each(['24.01', '25.09'] as const)('peerReaders of an exported golden (v%s)', (version) => {
  it('counts the peer nodes connected to the export: 0 before anyone reads, one per reading node, less when one is done or gone; none for an image not exported', async () => {
    const a = await node('node-a', version);
    const spec = await imageSpec('img');
    await a.backend.ensureImage(spec);
    await a.backend.ensureImage(await imageSpec('quiet'));
    const ref = await exportTo(a, 'img', ['node-b', 'node-c']);
    expect(await imageOf(a, 'img')).toMatchObject({ phase: 'ready', peerReaders: 0 });
    expect((await imageOf(a, 'quiet'))?.peerReaders).toBeUndefined();

    // B and C read lazily; their hydration is held (their inflates hang until the faults go).
    const b = await node('node-b', version);
    const c = await node('node-c', version);
    for (const n of [b, c]) n.sim.injectFault({ method: 'bdev_lvol_inflate', action: 'hang', times: 1000 });
    await b.backend.ensureImage({ ...spec, peer: ref });
    expect((await imageOf(a, 'img'))?.peerReaders).toBe(1);
    await c.backend.ensureImage({ ...spec, peer: ref });
    await c.backend.ensureDisk({ id: 'd-c', source: { kind: 'image', image: 'img' } });
    expect((await imageOf(a, 'img'))?.peerReaders).toBe(2);

    // B finishes hydrating and lets A go.
    b.sim.clearFaults();
    await until('B hydrated', async () => (await imageOf(b, 'img'))?.phase === 'ready', 30_000);
    await until('A counts one reader', async () => (await imageOf(a, 'img'))?.peerReaders === 1, 10_000);

    // C's target dies: its connection closes and A stops counting it.
    await c.backend.close();
    await c.sim.kill();
    expect((await imageOf(a, 'img'))?.peerReaders).toBe(0);
  }, 60_000);
});

describe.each(['24.01', '25.09'] as const)('one inflate at a time per target (v%s)', (version) => {
  it('an import while a hydration\'s inflate is stalled on an absent peer waits for it, and both images end whole (an overlapping inflate would leave clusters without data)', async () => {
    const a = await node('node-a', version);
    const spec = await imageSpec('img');
    await a.backend.ensureImage(spec);
    const ref = await exportTo(a, 'img', ['node-b']);
    const b = await node('node-b', version);
    await b.backend.ensureImage({ ...spec, peer: ref });
    // A goes away before B copied anything: B's inflate stalls on the reconnecting source...
    b.sim.injectFault({ method: 'bdev_lvol_inflate', action: 'hang' });
    await a.backend.close();
    await a.sim.kill();
    await until('B\'s inflate stalls', () => Promise.resolve(b.sim.snapshot().inflating.includes('kvs/img-img.hyd')), 15_000);
    // ... and an import of another image starts meanwhile.
    const importing = b.backend.ensureImage(await imageSpec('other'));
    let imported = false;
    void importing.then(() => (imported = true), () => undefined);
    await new Promise((r) => setTimeout(r, 300));
    // A returns and serves again: the hydration ends, then the import runs.
    a.sim = await startSim(a, version);
    a.backend = backendOf('node-a', a.paths);
    await a.backend.start();
    await exportTo(a, 'img', ['node-b']);
    expect(await importing).toMatchObject({ name: 'other', phase: 'ready' });
    expect(imported).toBe(true);
    await until('B hydrated', async () => (await imageOf(b, 'img'))?.phase === 'ready', 30_000);
    expect(b.crashes).toEqual([]);
    // Every thick lvol owns all its clusters (nothing left without data).
    const holes = b.sim.snapshot().lvols.filter((l) => !l.thin && l.allocated < l.clusters);
    expect(holes).toEqual([]);
  }, 60_000);
});

describe.each(['24.01', '25.09'] as const)('a full import copying into the lvstore (v%s)', (version) => {
  it("says 'importing', not 'hydrating' (which tells the agent disks can clone it), until its golden exists", async () => {
    const a = await node('node-a', version);
    a.sim.injectFault({ method: 'bdev_lvol_inflate', action: 'hang', times: 1 });
    const importing = a.backend.ensureImage(await imageSpec('img'));
    await until('the import copies into the lvstore', async () => (await imageOf(a, 'img'))?.message === 'copying into the lvstore', 10_000);
    expect(await imageOf(a, 'img')).toMatchObject({ phase: 'importing' });
    await expect(a.backend.ensureDisk({ id: 'd-early', source: { kind: 'image', image: 'img' } })).rejects.toMatchObject({ kind: 'notFound' });
    a.sim.clearFaults();
    await importing.catch(() => undefined);
    await until('the image is ready', async () => (await a.backend.ensureImage(await imageSpec('img'))).phase === 'ready', 30_000);
    expect(await imageOf(a, 'img')).toMatchObject({ phase: 'ready' });
  }, 60_000);
});
