import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeAgent } from '../../src/agent/agent.js';
import { ImagePeers } from '../../src/agent/image-peers.js';
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
import { frontEndAsync, type Request } from '../helpers/vhost-front-end.js';

/**
 * Source failover in cluster mode: three "nodes" (each its own qemu-storage-daemon, agent,
 * kubelet PodResources) on one fake API server. A and C hold the image; B's disk is Ready at
 * once and hydrates from one of them (the chooser's pick) while its guest writes; that node
 * dies (agent gone, daemon SIGKILLed, its NodeImageCache left behind as a dead node's is). B's
 * agent moves the hydration to the other node after the bound, its NodeImageCache names the
 * new source (which counts B as a reader), the image becomes ready and verified, and the
 * guest's disk reads back the image with its writes.
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
  stateDir: string;
}

let dir: string;
let api: FakeApiServer;
const nodes: Node[] = [];
const image = randomBytes(SIZE);
const SHA = sha(image);
const KEY = imageKey({ name: 'base', source: { http: { url: 'http://x.invalid/', sha256: SHA } }, format: 'raw' });

async function startNode(name: string, hydrationBytesPerSecond?: number): Promise<Node> {
  const nd = path.join(dir, name);
  await mkdir(nd, { recursive: true });
  const stateDir = path.join(nd, 'qsd');
  const backend = new QsdBackend({ stateDir, vhostDir: path.join(nd, 'vh'), managed: true, restartDelayMs: 50, hydrationRetryMs: 100, ...(hydrationBytesPerSecond ? { hydrationBytesPerSecond } : {}) });
  const { server: kubelet, socket, slots } = await startFakePodResources(nd);
  const logger = silentLogger;
  const retry = { initialMs: 50, maxMs: 200 };
  const kube = new KubeApi(api.kubeConfig(name));
  const status = new StatusPublisher({ node: name, api: kube, logger, retry });
  const agentState = path.join(nd, 'st');
  const exportAddress = { kind: 'unix' as const, path: path.join(nd, 'nbd.sock') };
  const peers = new ImagePeers({ self: name, backend, stateDir: agentState, exportAddress, logger });
  const agent = new NodeAgent({
    backend,
    stateDir: agentState,
    socket: { ...OWNER, mode: 0o660 },
    orphanGraceMs: 0,
    resyncMs: 200,
    node: name,
    logger,
    onVmiStatus: status.onVmiStatus,
    peers,
    sourceFailoverAfterMs: 2_000,
  });
  const cluster = new ClusterAgent({ node: name, api: kube, agent, status, peers, imageExportAddress: exportAddress, podResources: new PodResourcesClient(socket), logger, podResourcesPollMs: 100, retry, debounceMs: 10 });
  await backend.start();
  await cluster.start();
  const n = { name, backend, cluster, kubelet, slots, stateDir };
  nodes.push(n);
  return n;
}

/** The node dies: its agent is gone, its daemon is SIGKILLed (not restarted); its NodeImageCache stays. */
async function killNode(n: Node): Promise<void> {
  nodes.splice(nodes.indexOf(n), 1);
  await n.cluster.stop();
  const pid = Number(await readFile(path.join(n.stateDir, 'qsd.pid'), 'utf8'));
  // In one tick: the backend is closing before it sees the exit, so it does not restart the daemon.
  process.kill(pid, 'SIGKILL');
  await n.backend.close();
  n.kubelet.forceShutdown();
}

function schedule(n: Node, vmi: string, uid: string): void {
  api.put(VMIS, vmiObject(vmi, uid, `- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 16Mi}\n`, n.name));
  api.put(PODS, launcherPod(`virt-launcher-${vmi}`, uid, n.name));
  n.slots.push({ namespace: 'default', pod: `virt-launcher-${vmi}`, container: 'compute', slot: 'slot-01' });
}

const diskStatus = (vmi: string) => {
  const a = (api.get(VMIS, vmi, 'default')?.metadata?.annotations as Record<string, string> | undefined)?.[STATUS_ANNOTATION];
  return a === undefined ? undefined : VmiStatusSchema.parse(JSON.parse(a)).disks.find((d) => d.name === 'root');
};
const cacheOf = (node: string) => {
  const o = api.get(NICS, node);
  const st = o?.status === undefined ? undefined : NodeImageCacheStatusSchema.safeParse(o.status).data;
  return st?.images.find((i) => i.name === 'base');
};

async function io(socketPath: string, requests: Request[]): Promise<Array<{ status: number; sha256?: string }>> {
  return (await frontEndAsync(socketPath, requests)).results;
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'clfail-'));
  await writeFile(path.join(dir, 'origin.raw'), image);
  api = await FakeApiServer.start();
  // A host-path origin cannot be read lazily: B's only way on is another peer.
  api.put(CIMGS, { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name: 'base' }, spec: { source: { hostPath: { path: path.join(dir, 'origin.raw'), sha256: SHA } }, size: SIZE } });
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

describe.skipIf(!canRun)('source failover between nodes (qsd, cluster mode)', { timeout: 240_000 }, () => {
  it('B\'s hydration moves from the peer that died to the other one, finishes, and the guest\'s disk keeps its writes', async () => {
    const a = await startNode('node-a');
    schedule(a, 'vm-a', 'uid-a');
    await eventually('vm-a Ready', () => diskStatus('vm-a')?.phase === 'Ready', 60_000);
    const c = await startNode('node-c');
    schedule(c, 'vm-c', 'uid-c');
    await eventually('C holds the image, ready and exported', () => (cacheOf('node-c')?.phase === 'ready' && cacheOf('node-c')?.export ? true : undefined), 90_000);
    await eventually('A exports the image', () => cacheOf('node-a')?.export);

    const b = await startNode('node-b', MiB);
    schedule(b, 'vm-b', 'uid-b');
    await eventually('vm-b Ready', () => diskStatus('vm-b')?.phase === 'Ready', 60_000);
    const first = await eventually('B names its source', () => {
      const s = cacheOf('node-b');
      return s?.phase === 'hydrating' && (s.source === 'node-a' || s.source === 'node-c') ? s.source : undefined;
    });
    const [dead, other] = first === 'node-a' ? [a, c] : [c, a];
    expect(cacheOf('node-b')?.key).toBe(KEY);
    const socket = path.join(dir, 'node-b', 'vh', 'slot-01', 'root');
    expect((await io(socket, [{ op: 'write', sector: 0, len: MiB, fill: 0x5a }])).map((r) => r.status)).toEqual([0]);
    await eventually('some hydration from the first peer', () => ((cacheOf('node-b')?.hydratedPercent ?? 0) >= 10 ? true : undefined));

    await killNode(dead);
    // The dead node's NodeImageCache still says it holds the image: only the failover skips it.
    expect(cacheOf(dead.name)?.export).toBeDefined();
    await eventually('B names the other node as its source', () => (cacheOf('node-b')?.source === other.name ? true : undefined), 90_000);
    expect(cacheOf('node-b')?.phase).toBe('hydrating');
    await eventually('the other node counts B as a reader', () => ((cacheOf(other.name)?.peerReaders ?? 0) >= 1 ? true : undefined));
    expect((await io(socket, [{ op: 'write', sector: (2 * MiB) / 512, len: MiB, fill: 0x66 }])).map((r) => r.status)).toEqual([0]);

    // Ready means the sha256 of the hydrated golden matched.
    await eventually('B hydrated', () => (cacheOf('node-b')?.phase === 'ready' ? true : undefined), 90_000);
    expect(cacheOf('node-b')?.source).toBeUndefined();
    const want = Array.from({ length: SIZE / MiB }, (_, i) => sha(image.subarray(i * MiB, (i + 1) * MiB)));
    want[0] = sha(Buffer.alloc(MiB, 0x5a));
    want[2] = sha(Buffer.alloc(MiB, 0x66));
    const all = await io(socket, Array.from({ length: SIZE / MiB }, (_, i) => ({ op: 'read' as const, sector: (i * MiB) / 512, len: MiB })));
    expect(all.every((r) => r.status === 0)).toBe(true);
    expect(all.map((r) => r.sha256)).toEqual(want);
    expect(diskStatus('vm-b')?.phase).toBe('Ready');
  });
});
