import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeAgent } from '../../src/agent/agent.js';
import { ImagePeers } from '../../src/agent/image-peers.js';
import { chooseImageSource } from '../../src/agent/image-sources.js';
import { VmiStatusSchema } from '../../src/api/status.js';
import { STATUS_ANNOTATION } from '../../src/api/volumes.js';
import { QsdBackend } from '../../src/backend/qsd/index.js';
import type { RemoteDiskRef } from '../../src/backend/types.js';
import { imageKey } from '../../src/contract/index.js';
import { KubeApi } from '../../src/kube/api.js';
import { ClusterAgent } from '../../src/kube/cluster.js';
import { NodeImageCacheStatusSchema, peerGoldensOf } from '../../src/kube/mapping.js';
import { PodResourcesClient, type PodSlot } from '../../src/kube/podresources.js';
import { StatusPublisher } from '../../src/kube/status-publisher.js';
import { silentLogger } from '../../src/log.js';
import { CIMGS, eventually, launcherPod, PODS, vmiObject, VMIS } from '../helpers/cluster-rig.js';
import { FakeApiServer } from '../helpers/fake-apiserver.js';
import { startFakePodResources } from '../helpers/fake-podresources.js';
import { frontEndAsync } from '../helpers/vhost-front-end.js';

/**
 * Node-to-node distribution in cluster mode: three "nodes" (each its own qemu-storage-daemon,
 * agent, kubelet PodResources) on one fake API server. Node A imports the image from the
 * origin; node B's disk is Ready at once from A's golden and hydrates from it while A keeps the
 * golden (even over its cache limit); once B stands alone A lets it go and B keeps serving.
 * Node C's first choice is a peer that does not answer: it falls back to the next (B).
 */

const available = (cmd: string, args: string[]): boolean => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
const canRun =
  available('qemu-storage-daemon', ['--version']) &&
  available('qemu-img', ['--version']) &&
  available('python3', ['-c', 'import os, socket; os.eventfd; os.memfd_create; socket.send_fds']);

const NICS = 'kubevirt-spdk.io/v1alpha1/nodeimagecaches';
const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const OWNER = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

interface Node {
  name: string;
  backend: QsdBackend;
  cluster: ClusterAgent;
  kubelet: grpc.Server;
  slots: PodSlot[];
}

let dir: string;
let api: FakeApiServer;
const nodes: Node[] = [];
const image = randomBytes(SIZE);
const SHA = sha(image);
const KEY = imageKey({ name: 'base', source: { http: { url: 'http://x.invalid/', sha256: SHA } }, format: 'raw' });

async function startNode(name: string, extra: { hydrationBytesPerSecond?: number; maxCount?: number } = {}): Promise<Node> {
  const nd = path.join(dir, name);
  await mkdir(nd, { recursive: true });
  const backend = new QsdBackend({ stateDir: path.join(nd, 'qsd'), vhostDir: path.join(nd, 'vh'), managed: true, restartDelayMs: 50, hydrationRetryMs: 100, ...(extra.hydrationBytesPerSecond ? { hydrationBytesPerSecond: extra.hydrationBytesPerSecond } : {}) });
  const { server: kubelet, socket, slots } = await startFakePodResources(nd);
  const logger = silentLogger;
  const retry = { initialMs: 50, maxMs: 200 };
  const kube = new KubeApi(api.kubeConfig(name));
  const status = new StatusPublisher({ node: name, api: kube, logger, retry });
  const stateDir = path.join(nd, 'st');
  const exportAddress = { kind: 'unix' as const, path: path.join(nd, 'nbd.sock') };
  const peers = new ImagePeers({ self: name, backend, stateDir, exportAddress, logger });
  const agent = new NodeAgent({
    backend,
    stateDir,
    socket: { ...OWNER, mode: 0o660 },
    orphanGraceMs: 0,
    resyncMs: 200,
    node: name,
    logger,
    onVmiStatus: status.onVmiStatus,
    peers,
    ...(extra.maxCount !== undefined ? { cache: { maxCount: extra.maxCount } } : {}),
  });
  // Exports on unix sockets: a single-host rig, so peers' unix exports are accepted too.
  const cluster = new ClusterAgent({ node: name, api: kube, agent, status, peers, imageExportAddress: exportAddress, podResources: new PodResourcesClient(socket), logger, podResourcesPollMs: 100, retry, debounceMs: 10 });
  await backend.start();
  await cluster.start();
  const n = { name, backend, cluster, kubelet, slots };
  nodes.push(n);
  return n;
}

/** The node's agent and its daemon stop (an agent restart: the managed daemon goes with it). */
async function stopNode(n: Node): Promise<void> {
  nodes.splice(nodes.indexOf(n), 1);
  await n.cluster.stop();
  await n.backend.close();
  n.kubelet.forceShutdown();
}

function schedule(n: Node, vmi: string, uid: string, cachedImage: string): void {
  api.put(VMIS, vmiObject(vmi, uid, `- name: root\n  spdkVhostBlkDisk: {image: ${cachedImage}, capacity: 16Mi}\n`, n.name));
  api.put(PODS, launcherPod(`virt-launcher-${vmi}`, uid, n.name));
  n.slots.push({ namespace: 'default', pod: `virt-launcher-${vmi}`, container: 'compute', slot: 'slot-01' });
}

const diskStatus = (vmi: string) => {
  const a = (api.get(VMIS, vmi, 'default')?.metadata?.annotations as Record<string, string> | undefined)?.[STATUS_ANNOTATION];
  return a === undefined ? undefined : VmiStatusSchema.parse(JSON.parse(a)).disks.find((d) => d.name === 'root');
};
const updatedAt = (node: string): string | undefined => (api.get(NICS, node)?.status as { updatedAt?: string } | undefined)?.updatedAt;
const cacheOf = (node: string, cachedImage: string) => {
  const o = api.get(NICS, node);
  const st = o?.status === undefined ? undefined : NodeImageCacheStatusSchema.safeParse(o.status).data;
  return st?.images.find((i) => i.name === cachedImage);
};

async function readAll(socketPath: string): Promise<string[]> {
  const res = await frontEndAsync(socketPath, Array.from({ length: SIZE / MiB }, (_, i) => ({ op: 'read' as const, sector: (i * MiB) / 512, len: MiB })));
  expect(res.results.every((r) => r.status === 0)).toBe(true);
  return res.results.map((r) => r.sha256 ?? '');
}
const want = Array.from({ length: SIZE / MiB }, (_, i) => sha(image.subarray(i * MiB, (i + 1) * MiB)));

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cldist-'));
  await writeFile(path.join(dir, 'origin.raw'), image);
  api = await FakeApiServer.start();
  // Two CachedImage names of one content: one golden per node.
  for (const name of ['base', 'base-copy']) {
    api.put(CIMGS, { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name }, spec: { source: { hostPath: { path: path.join(dir, 'origin.raw'), sha256: SHA } }, size: SIZE } });
  }
});

afterAll(async () => {
  for (const n of nodes.splice(0)) {
    await n.cluster.stop();
    await n.backend.close();
    n.kubelet.forceShutdown();
  }
  await api?.close();
  await rm(dir, { recursive: true, force: true });
});

describe.skipIf(!canRun)('image distribution between nodes (qsd, cluster mode)', { timeout: 180_000 }, () => {
  it('B boots from A\'s golden at once and hydrates from it (across an agent restart); A keeps it meanwhile, then lets it go; B stands alone', async () => {
    const a = await startNode('node-a', { maxCount: 0 });
    // What B's NodeImageCache said whenever A deleted a golden: never "hydrating from A".
    const atDelete: Array<string | undefined> = [];
    const del = a.backend.deleteImage.bind(a.backend);
    a.backend.deleteImage = (name: string) => {
      atDelete.push(cacheOf('node-b', 'base-copy')?.source);
      return del(name);
    };
    schedule(a, 'vm-a', 'uid-a', 'base');
    await eventually('vm-a Ready', () => diskStatus('vm-a')?.phase === 'Ready', 60_000);
    const onA = await eventually('A exports its golden', () => cacheOf('node-a', 'base')?.export);
    expect(cacheOf('node-a', 'base')).toMatchObject({ key: KEY, phase: 'ready' });
    expect(cacheOf('node-a', 'base-copy')).toMatchObject({ key: KEY, phase: 'ready' });

    const b = await startNode('node-b', { hydrationBytesPerSecond: MiB });
    schedule(b, 'vm-b', 'uid-b', 'base-copy');
    await eventually('vm-b Ready', () => diskStatus('vm-b')?.phase === 'Ready', 60_000);
    // Ready before its golden is whole: it hydrates from A, and says so.
    const hydrating = await eventually('B names A as its source', () => {
      const c = cacheOf('node-b', 'base-copy');
      return c?.phase === 'hydrating' && c.source === 'node-a' ? c : undefined;
    });
    expect(hydrating.key).toBe(KEY);
    await eventually('A counts B as a reader', () => cacheOf('node-a', 'base')?.peerReaders === 1);

    // A's VM goes: its golden is unused and over A's cache limit (0), but B still reads it.
    api.remove(VMIS, 'vm-a', 'default');
    api.remove(PODS, 'virt-launcher-vm-a', 'default');
    await eventually('A has no clone of it', () => cacheOf('node-a', 'base')?.clones === 0 || undefined);
    expect(cacheOf('node-b', 'base-copy')?.phase).toBe('hydrating');
    expect(cacheOf('node-a', 'base')).toBeDefined();

    // B's agent restarts mid-hydration: it resumes and still names A (which keeps its golden).
    await stopNode(b);
    const before = updatedAt('node-b');
    const b2 = await startNode('node-b', { hydrationBytesPerSecond: MiB });
    b2.slots.push({ namespace: 'default', pod: 'virt-launcher-vm-b', container: 'compute', slot: 'slot-01' });
    await eventually('B republished after its restart', () => updatedAt('node-b') !== before || undefined);
    expect(cacheOf('node-b', 'base-copy')).toMatchObject({ phase: 'hydrating', source: 'node-a' });
    expect(cacheOf('node-a', 'base')).toBeDefined();

    await eventually('B hydrated', () => cacheOf('node-b', 'base-copy')?.phase === 'ready', 90_000);
    expect(cacheOf('node-b', 'base-copy')?.source).toBeUndefined();
    // Nobody reads A's golden now: it is evicted, and B serves every byte without A.
    await eventually('A evicted its golden', () => cacheOf('node-a', 'base') === undefined, 30_000);
    expect(atDelete.length).toBeGreaterThan(0);
    expect(atDelete.every((s) => s === undefined)).toBe(true);
    const socket = path.join(dir, 'node-b', 'vh', 'slot-01', 'root');
    expect(await readAll(socket)).toEqual(want);
    expect(onA).toMatchObject({ transport: 'nbd' });
  });

  it('C falls back from a peer that does not answer to the next one', async () => {
    const goldens = () => peerGoldensOf(api.list(NICS), { allowUnix: true });
    const dead: RemoteDiskRef = { transport: 'nbd', address: { kind: 'unix', path: path.join(dir, 'nobody.sock') }, exportName: `img.${KEY}`, sizeBytes: SIZE };
    // A ghost node whose NodeImageCache says it holds the golden, named so that C tries it first.
    const ghost = Array.from({ length: 64 }, (_, i) => `ghost-${i}`).find((g) => {
      const choice = chooseImageSource({ self: 'node-c', key: KEY, transport: 'nbd', goldens: [...goldens(), { node: g, key: KEY, phase: 'ready', export: dead }] });
      return choice.kind === 'peer' && choice.node === g;
    });
    expect(ghost).toBeDefined();
    api.put(NICS, { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'NodeImageCache', metadata: { name: ghost }, status: { backend: 'qsd', summary: 'base', usedBytes: SIZE, updatedAt: new Date().toISOString(), images: [{ name: 'base', key: KEY, phase: 'ready', export: dead }] } });

    const c = await startNode('node-c', { hydrationBytesPerSecond: 4 * MiB });
    schedule(c, 'vm-c', 'uid-c', 'base');
    await eventually('vm-c Ready', () => diskStatus('vm-c')?.phase === 'Ready', 60_000);
    await eventually('C hydrates from B', () => cacheOf('node-c', 'base')?.source === 'node-b');
    await eventually('C hydrated', () => cacheOf('node-c', 'base')?.phase === 'ready', 90_000);
    expect(await readAll(path.join(dir, 'node-c', 'vh', 'slot-01', 'root'))).toEqual(want);
  });
});
