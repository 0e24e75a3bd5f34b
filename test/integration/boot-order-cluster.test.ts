import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeAgent } from '../../src/agent/agent.js';
import { BootProfiles } from '../../src/agent/boot-profile.js';
import { ImagePeers } from '../../src/agent/image-peers.js';
import { VmiStatusSchema } from '../../src/api/status.js';
import { STATUS_ANNOTATION } from '../../src/api/volumes.js';
import { QsdBackend } from '../../src/backend/qsd/index.js';
import { imageKey, subtractRanges, type BootRange } from '../../src/contract/index.js';
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
 * Boot-order prefetch across nodes in cluster mode (each node its own qemu-storage-daemon,
 * agent and kubelet, one fake API server, a throttled loopback origin): node A boots the image
 * first and records the blocks its guest read; the profile travels in A's NodeImageCache into
 * node B's ImageSpec (a hostile profile another "node" publishes is refused, the good one used);
 * B hydrates it first and publishes it too, so it outlives A's golden.
 */

const available = (cmd: string, args: string[]): boolean => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
const haveCurl = spawnSync('sh', ['-c', 'ls /usr/lib/*/qemu/block-curl.so'], { stdio: 'ignore' }).status === 0;
const haveFuse = spawnSync('sh', ['-c', 'test -c /dev/fuse && test "$(id -u)" = 0'], { stdio: 'ignore' }).status === 0;
const canRun =
  available('qemu-storage-daemon', ['--version']) &&
  available('qemu-img', ['--version']) &&
  available('python3', ['-c', 'import os, socket; os.eventfd; os.memfd_create; socket.send_fds']);

const NICS = 'kubevirt-spdk.io/v1alpha1/nodeimagecaches';
const MiB = 1024 * 1024;
const K = 64 * 1024;
const SIZE = 32 * MiB;
const OWNER = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const BOOT: BootRange[] = [
  { offset: 5 * MiB, length: K },
  { offset: 13 * MiB + 2 * K, length: 2 * K },
  { offset: 22 * MiB, length: 4 * K },
  { offset: 30 * MiB, length: K },
];

interface Node {
  name: string;
  backend: QsdBackend;
  cluster: ClusterAgent;
  kubelet: grpc.Server;
  slots: PodSlot[];
}

let dir: string;
let api: FakeApiServer;
let origin: Origin;
const nodes: Node[] = [];
const image = randomBytes(SIZE);
const SHA = sha(image);

async function startNode(name: string, extra: { record?: boolean; maxCount?: number } = {}): Promise<Node> {
  const nd = path.join(dir, name);
  await mkdir(nd, { recursive: true });
  const backend = new QsdBackend({
    stateDir: path.join(nd, 'qsd'),
    vhostDir: path.join(nd, 'vh'),
    managed: true,
    restartDelayMs: 50,
    hydrationRetryMs: 100,
    lazyImages: true,
    bootOrder: { record: extra.record ?? false, capMs: 30_000, quietMs: 1_500, idleMs: 30_000, pollMs: 200 },
  });
  const { server: kubelet, socket, slots } = await startFakePodResources(nd);
  const logger = silentLogger;
  const retry = { initialMs: 50, maxMs: 200 };
  const kube = new KubeApi(api.kubeConfig(name));
  const status = new StatusPublisher({ node: name, api: kube, logger, retry });
  const stateDir = path.join(nd, 'st');
  const exportAddress = { kind: 'unix' as const, path: path.join(nd, 'nbd.sock') };
  const peers = new ImagePeers({ self: name, backend, stateDir, exportAddress, logger });
  const bootProfiles = new BootProfiles(logger);
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
    bootProfiles,
    ...(extra.maxCount !== undefined ? { cache: { maxCount: extra.maxCount } } : {}),
  });
  const cluster = new ClusterAgent({
    node: name,
    api: kube,
    agent,
    status,
    peers,
    bootProfiles,
    imageExportAddress: exportAddress,
    podResources: new PodResourcesClient(socket),
    logger,
    podResourcesPollMs: 100,
    retry,
    debounceMs: 10,
  });
  await backend.start();
  await cluster.start();
  const n = { name, backend, cluster, kubelet, slots };
  nodes.push(n);
  return n;
}

function schedule(n: Node, vmi: string, uid: string): void {
  api.put(VMIS, vmiObject(vmi, uid, '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 32Mi}\n', n.name));
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

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'bootcl-'));
  origin = await startOrigin(image, { bytesPerSecond: 4 * MiB });
  api = await FakeApiServer.start();
  api.put(CIMGS, { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name: 'base' }, spec: { source: { http: { url: origin.url, sha256: SHA } }, size: SIZE } });
});

afterAll(async () => {
  for (const n of nodes.splice(0)) {
    await n.cluster.stop();
    await n.backend.close();
    n.kubelet.forceShutdown();
  }
  await api?.close();
  await origin?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe.skipIf(!canRun || !haveCurl || !haveFuse)('boot-order prefetch between nodes (qsd, cluster mode)', { timeout: 240_000 }, () => {
  it("A records its first boot; B gets the profile from A's NodeImageCache (a hostile one refused), hydrates it first, and keeps publishing it after A evicted its golden", async () => {
    const key = imageKey({ name: 'base', source: { http: { url: origin.url, sha256: SHA } }, format: 'raw' });
    // A "node" that publishes a hostile profile for the same key, named to be read first.
    api.put(NICS, {
      apiVersion: 'kubevirt-spdk.io/v1alpha1',
      kind: 'NodeImageCache',
      metadata: { name: 'aaa-ghost' },
      status: { backend: 'qsd', summary: 'base', usedBytes: SIZE, updatedAt: new Date().toISOString(), images: [{ name: 'base', key, phase: 'failed', bootProfile: { sizeBytes: SIZE, ranges: [{ offset: 0, length: 64 * SIZE }] } }] },
    });

    const a = await startNode('node-a', { record: true, maxCount: 0 });
    schedule(a, 'vm-a', 'uid-a');
    await eventually('vm-a Ready', () => diskStatus('vm-a')?.phase === 'Ready', 60_000);
    const boot = await frontEndAsync(
      path.join(dir, 'node-a', 'vh', 'slot-01', 'root'),
      BOOT.map((r) => ({ op: 'read' as const, sector: r.offset / 512, len: r.length })),
    );
    expect(boot.results.every((r) => r.status === 0)).toBe(true);
    const recorded = await eventually('A publishes the profile it recorded', () => cacheOf('node-a')?.bootProfile as { sizeBytes: number; ranges: BootRange[] } | undefined, 60_000);
    expect(subtractRanges(BOOT, recorded.ranges)).toEqual([]);
    expect(subtractRanges(recorded.ranges, BOOT)).toEqual([]);

    const b = await startNode('node-b');
    schedule(b, 'vm-b', 'uid-b');
    await eventually('vm-b Ready', () => diskStatus('vm-b')?.phase === 'Ready', 60_000);
    const onB = await eventually('B publishes the profile it replayed', () => cacheOf('node-b')?.bootProfile, 60_000);
    expect(onB).toEqual(recorded);

    // A's VM goes; once B stands alone A evicts its golden (cache limit 0): B still publishes the profile.
    api.remove(VMIS, 'vm-a', 'default');
    api.remove(PODS, 'virt-launcher-vm-a', 'default');
    await eventually('B hydrated', () => cacheOf('node-b')?.phase === 'ready', 120_000);
    await eventually('A evicted its golden', () => cacheOf('node-a') === undefined, 60_000);
    expect(cacheOf('node-b')?.bootProfile).toEqual(recorded);
  });
});
