import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NodeAgent } from '../../src/agent/agent.js';
import { ImagePeers } from '../../src/agent/image-peers.js';
import { ORIGIN, rendezvous } from '../../src/agent/image-sources.js';
import { VmiStatusSchema } from '../../src/api/status.js';
import { STATUS_ANNOTATION } from '../../src/api/volumes.js';
import { QsdBackend } from '../../src/backend/qsd/index.js';
import { imageKey } from '../../src/contract/index.js';
import { KubeApi } from '../../src/kube/api.js';
import { ClusterAgent } from '../../src/kube/cluster.js';
import { NodeImageCacheStatusSchema } from '../../src/kube/mapping.js';
import { PodResourcesClient, type PodSlot } from '../../src/kube/podresources.js';
import { StatusPublisher } from '../../src/kube/status-publisher.js';
import { silentLogger } from '../../src/log.js';
import { CIMGS, eventually, launcherPod, PODS, vmiObject, VMIS } from '../helpers/cluster-rig.js';
import { FakeApiServer } from '../helpers/fake-apiserver.js';
import { startFakePodResources } from '../helpers/fake-podresources.js';
import { startOrigin, type Origin } from '../helpers/origin.js';
import { frontEndAsync } from '../helpers/vhost-front-end.js';

/**
 * The seed rule in cluster mode: three "nodes" (each its own qemu-storage-daemon, agent and
 * kubelet PodResources, on one fake API server) start the same image at the same moment, and no
 * node holds it. Each announces it (NodeImageCache phase `wanted`); one seed reads the HTTP
 * origin lazily, the others hydrate from the seed's export. The origin counts the bytes it
 * sends: one image, not three. Then the seed dies right after announcing (its last
 * NodeImageCache, saying `wanted`, stays behind): the others give up on it and still finish.
 */

const available = (cmd: string, args: string[]): boolean => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
const canRun =
  available('qemu-storage-daemon', ['--version']) &&
  available('qemu-img', ['--version']) &&
  available('python3', ['-c', 'import os, socket; os.eventfd; os.memfd_create; socket.send_fds']) &&
  spawnSync('sh', ['-c', 'ls /usr/lib/*/qemu/block-curl.so /usr/lib/qemu/block-curl.so 2>/dev/null | grep -q .']).status === 0;

const NICS = 'kubevirt-spdk.io/v1alpha1/nodeimagecaches';
const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
// Long enough that a loaded machine never makes a follower give up on a live seed.
const SEED_WAIT_MS = 8_000;
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
const origins: Origin[] = [];

async function startNode(name: string): Promise<Node> {
  const nd = path.join(dir, name);
  await mkdir(nd, { recursive: true });
  const backend = new QsdBackend({ stateDir: path.join(nd, 'qsd'), vhostDir: path.join(nd, 'vh'), managed: true, restartDelayMs: 50, hydrationRetryMs: 100, lazyImages: true });
  const { server: kubelet, socket, slots } = await startFakePodResources(nd);
  const logger = silentLogger;
  const retry = { initialMs: 50, maxMs: 200 };
  const kube = new KubeApi(api.kubeConfig(name));
  const status = new StatusPublisher({ node: name, api: kube, logger, retry });
  const stateDir = path.join(nd, 'st');
  const exportAddress = { kind: 'unix' as const, path: path.join(nd, 'nbd.sock') };
  const peers = new ImagePeers({ self: name, backend, stateDir, exportAddress, logger, seed: { waitMs: SEED_WAIT_MS, settleMs: 500 } });
  const agent = new NodeAgent({ backend, stateDir, socket: { ...OWNER, mode: 0o660 }, orphanGraceMs: 0, resyncMs: 200, node: name, logger, onVmiStatus: status.onVmiStatus, peers });
  // Exports on unix sockets: a single-host rig, so peers' unix exports are accepted too.
  const cluster = new ClusterAgent({ node: name, api: kube, agent, status, peers, imageExportAddress: exportAddress, podResources: new PodResourcesClient(socket), logger, podResourcesPollMs: 100, retry, debounceMs: 10 });
  await backend.start();
  await cluster.start();
  const n = { name, backend, cluster, kubelet, slots };
  nodes.push(n);
  return n;
}

async function stopNode(n: Node): Promise<void> {
  nodes.splice(nodes.indexOf(n), 1);
  await n.cluster.stop();
  await n.backend.close();
  n.kubelet.forceShutdown();
}

function schedule(n: Node, vmi: string, cachedImage: string): void {
  api.put(VMIS, vmiObject(vmi, `uid-${vmi}`, `- name: root\n  spdkVhostBlkDisk: {image: ${cachedImage}, capacity: 16Mi}\n`, n.name));
  api.put(PODS, launcherPod(`virt-launcher-${vmi}`, `uid-${vmi}`, n.name));
  n.slots.push({ namespace: 'default', pod: `virt-launcher-${vmi}`, container: 'compute', slot: 'slot-01' });
}

const diskPhase = (vmi: string): string | undefined => {
  const a = (api.get(VMIS, vmi, 'default')?.metadata?.annotations as Record<string, string> | undefined)?.[STATUS_ANNOTATION];
  return a === undefined ? undefined : VmiStatusSchema.parse(JSON.parse(a)).disks.find((d) => d.name === 'root')?.phase;
};
const cacheOf = (node: string, cachedImage: string) => {
  const o = api.get(NICS, node);
  const st = o?.status === undefined ? undefined : NodeImageCacheStatusSchema.safeParse(o.status).data;
  return st?.images.find((i) => i.name === cachedImage);
};

/** A CachedImage over a fresh HTTP origin (throttled, counting its bytes). */
async function image(name: string): Promise<{ data: Buffer; key: string; origin: Origin }> {
  const data = randomBytes(SIZE);
  const origin = await startOrigin(data, { bytesPerSecond: 4 * MiB, name: `${name}.raw` });
  origins.push(origin);
  const source = { http: { url: origin.url, sha256: sha(data) } };
  api.put(CIMGS, { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name }, spec: { source, size: SIZE } });
  return { data, key: imageKey({ name, source, format: 'raw' }), origin };
}

async function readsBack(node: string, data: Buffer): Promise<void> {
  const socket = path.join(dir, node, 'vh', 'slot-01', 'root');
  const res = await frontEndAsync(socket, Array.from({ length: SIZE / MiB }, (_, i) => ({ op: 'read' as const, sector: (i * MiB) / 512, len: MiB })));
  expect(res.results.map((r) => r.sha256)).toEqual(Array.from({ length: SIZE / MiB }, (_, i) => sha(data.subarray(i * MiB, (i + 1) * MiB))));
}

/** Every `source` each node's NodeImageCache named for the image while the test polled. */
function watchSources(names: readonly string[], cachedImage: string): { seen: Map<string, Set<string>>; stop: () => void } {
  const seen = new Map(names.map((n) => [n, new Set<string>()]));
  const t = setInterval(() => {
    for (const n of names) {
      const s = cacheOf(n, cachedImage)?.source;
      if (s) seen.get(n)?.add(s);
    }
  }, 20);
  return { seen, stop: () => clearInterval(t) };
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'clseed-'));
  api = await FakeApiServer.start();
});

afterEach(async () => {
  for (const n of nodes.splice(0)) await stopNode(n).catch(() => undefined);
});

afterAll(async () => {
  for (const o of origins) await o.stop();
  await api?.close();
  await rm(dir, { recursive: true, force: true });
});

describe.skipIf(!canRun)('the seed rule: nodes that start one image at once (qsd, cluster mode)', { timeout: 180_000 }, () => {
  it('three nodes, nobody holds the image: the origin serves it once, every disk Ready, every golden whole and verified', async () => {
    const { data, key, origin } = await image('seeded');
    const names = ['seed-n1', 'seed-n2', 'seed-n3'];
    const ns = await Promise.all(names.map((n) => startNode(n)));
    const seed = rendezvous(key, names);
    const watch = watchSources(names, 'seeded');
    // At the same moment, on every node.
    ns.forEach((n, i) => schedule(n, `vm-s${i}`, 'seeded'));
    await eventually('every node announced or holds it', () => names.every((n) => cacheOf(n, 'seeded') !== undefined), 30_000);
    await eventually('every disk Ready', () => ns.every((_, i) => diskPhase(`vm-s${i}`) === 'Ready'), 60_000);
    // Phase ready: hydrated and its sha256 verified against the CachedImage's.
    await eventually('every golden whole', () => names.every((n) => cacheOf(n, 'seeded')?.phase === 'ready'), 120_000);
    watch.stop();
    // One node read the origin (the seed, the one every node computed); the others read it.
    expect(watch.seen.get(seed ?? '')).toEqual(new Set([ORIGIN]));
    for (const n of names.filter((x) => x !== seed)) expect(watch.seen.get(n)).toEqual(new Set([seed]));
    // Once (and a 64 KiB probe of the image's header per node), not three times.
    expect(origin.served()).toBeGreaterThanOrEqual(SIZE);
    expect(origin.served()).toBeLessThan(1.5 * SIZE);
    for (const n of names) await readsBack(n, data);
  });

  it('the seed dies right after announcing (its NodeImageCache still says wanted): the others give up on it and still finish', async () => {
    const { data, key, origin } = await image('orphaned');
    const names = ['dead-n1', 'dead-n2', 'dead-n3'];
    const seed = rendezvous(key, names) ?? '';
    const ns = await Promise.all(names.map((n) => startNode(n)));
    const seedNode = ns.find((n) => n.name === seed);
    if (!seedNode) throw new Error('no seed node');
    ns.forEach((n, i) => schedule(n, `vm-d${i}`, 'orphaned'));
    const last = await eventually('the seed announced', () => (cacheOf(seed, 'orphaned')?.phase === 'wanted' ? api.get(NICS, seed) : undefined), 30_000);
    // The node goes away; the last thing it wrote stays, as after a crash or a lost node.
    await stopNode(seedNode);
    api.put(NICS, structuredClone(last));
    const rest = names.filter((n) => n !== seed);
    await eventually('the other disks Ready', () => ns.every((n, i) => n.name === seed || diskPhase(`vm-d${i}`) === 'Ready'), 60_000);
    await eventually('the other goldens whole', () => rest.every((n) => cacheOf(n, 'orphaned')?.phase === 'ready'), 120_000);
    expect(cacheOf(seed, 'orphaned')?.phase).toBe('wanted');
    for (const n of rest) await readsBack(n, data);
    // The next seed read the origin, the last node read it: still about one image, not two.
    expect(origin.served()).toBeLessThan(2 * SIZE);
  });
});
