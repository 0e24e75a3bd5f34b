import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll } from 'vitest';
import { NodeAgent } from '../../src/agent/agent.js';
import { BootProfiles } from '../../src/agent/boot-profile.js';
import { ImagePeers, type ImagePeersOptions } from '../../src/agent/image-peers.js';
import { VmiStatusSchema } from '../../src/api/status.js';
import { STATUS_ANNOTATION } from '../../src/api/volumes.js';
import { QsdBackend, type QsdBackendOptions } from '../../src/backend/qsd/index.js';
import { KubeApi } from '../../src/kube/api.js';
import { ClusterAgent } from '../../src/kube/cluster.js';
import { NodeImageCacheStatusSchema } from '../../src/kube/mapping.js';
import { PodResourcesClient, type PodSlot } from '../../src/kube/podresources.js';
import { StatusPublisher } from '../../src/kube/status-publisher.js';
import { silentLogger } from '../../src/log.js';
import { schedule as scheduleOn, VMIS } from './cluster-rig.js';
import { FakeApiServer } from './fake-apiserver.js';
import { startFakePodResources } from './fake-podresources.js';

/**
 * "Nodes" in cluster mode on one host: each its own managed qemu-storage-daemon, kubelet
 * PodResources server, ImagePeers (exports on a unix socket) and ClusterAgent, all on one fake
 * API server: the rig of the qsd cluster suites (distribution, failover, seed, boot order).
 * The qsd counterpart of cluster-rig.ts (one simulator node); qsd-nodes.ts has bare daemons.
 */

export const NICS = 'kubevirt-spdk.io/v1alpha1/nodeimagecaches';
const OWNER = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };

export interface QsdClusterNode {
  name: string;
  backend: QsdBackend;
  cluster: ClusterAgent;
  kubelet: grpc.Server;
  slots: PodSlot[];
  /** The daemon's state directory (its pid file is there). */
  qsdStateDir: string;
}

/** What the suites' nodes differ in; a suite's defaults, then a node's own (backend merged). */
export interface QsdClusterNodeOptions {
  backend?: Partial<QsdBackendOptions>;
  /** The agent's image cache limit (count of goldens). */
  maxCount?: number;
  sourceFailoverAfterMs?: number;
  seed?: ImagePeersOptions['seed'];
  /** Record/replay boot profiles (BootProfiles given to the agent and the cluster agent). */
  bootProfiles?: boolean;
}

export interface QsdCluster {
  /** This suite's temporary directory; node `n` lives in `<dir>/<n>`. */
  readonly dir: string;
  readonly api: FakeApiServer;
  /** The nodes started and not stopped yet. */
  readonly nodes: readonly QsdClusterNode[];
  start(name: string, extra?: QsdClusterNodeOptions): Promise<QsdClusterNode>;
  /** The node's agent and its daemon stop (an agent restart: the managed daemon goes with it). */
  stop(n: QsdClusterNode): Promise<void>;
  /** The node dies: its agent is gone, its daemon SIGKILLed (not restarted); its NodeImageCache stays. */
  kill(n: QsdClusterNode): Promise<void>;
  /** Stops every node, each even if another fails; then throws the first failure. */
  stopAll(): Promise<void>;
  /** What KubeVirt would have: the VMI with one disk `root` of `image` on the node, its launcher pod, slot-01. */
  schedule(n: QsdClusterNode, vmi: string, uid: string, disk?: { image?: string; capacity?: string }): void;
  /** The `root` disk's entry in the VMI's status annotation. */
  diskStatus: (vmi: string) => ReturnType<typeof rootDisk>;
  /** The node's NodeImageCache entry for a CachedImage (default `base`). */
  cacheOf: (node: string, cachedImage?: string) => ReturnType<typeof imageEntry>;
  /** The vhost-user-blk socket of `root` in slot-01 on the node. */
  diskSocket(node: string): string;
}

const rootDisk = (annotation: string) => VmiStatusSchema.parse(JSON.parse(annotation)).disks.find((d) => d.name === 'root');
const imageEntry = (status: unknown, cachedImage: string) => NodeImageCacheStatusSchema.safeParse(status).data?.images.find((i) => i.name === cachedImage);

/** Registers the suite's directory and API server (beforeAll) and their removal with every node left (afterAll); call at module level. */
export function useQsdCluster(prefix: string, defaults: QsdClusterNodeOptions = {}): QsdCluster {
  let dir: string | undefined;
  let api: FakeApiServer | undefined;
  const nodes: QsdClusterNode[] = [];
  const need = <T>(v: T | undefined): T => {
    if (v === undefined) throw new Error('the cluster rig is not started (call inside a test)');
    return v;
  };

  const stop = async (n: QsdClusterNode): Promise<void> => {
    const i = nodes.indexOf(n);
    if (i >= 0) nodes.splice(i, 1);
    await n.cluster.stop();
    await n.backend.close();
    n.kubelet.forceShutdown();
  };
  const stopAll = async (): Promise<void> => {
    let first: unknown;
    for (const n of nodes.slice()) await stop(n).catch((e: unknown) => (first ??= e));
    if (first !== undefined) throw first;
  };

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), prefix));
    api = await FakeApiServer.start();
  });
  afterAll(async () => {
    try {
      await stopAll();
    } finally {
      await api?.close();
      if (dir) await rm(dir, { recursive: true, force: true });
      api = undefined;
      dir = undefined;
    }
  });

  const rig: QsdCluster = {
    get dir() {
      return need(dir);
    },
    get api() {
      return need(api);
    },
    nodes,
    start: async (name, extra = {}) => {
      const o = { ...defaults, ...extra, backend: { ...defaults.backend, ...extra.backend } };
      const nd = path.join(rig.dir, name);
      await mkdir(nd, { recursive: true });
      const qsdStateDir = path.join(nd, 'qsd');
      const backend = new QsdBackend({ stateDir: qsdStateDir, vhostDir: path.join(nd, 'vh'), managed: true, restartDelayMs: 50, hydrationRetryMs: 100, ...o.backend });
      const { server: kubelet, socket, slots } = await startFakePodResources(nd);
      // The parts are built here and injected, as the agent binary's composition root does.
      const logger = silentLogger;
      const retry = { initialMs: 50, maxMs: 200 };
      const kube = new KubeApi(rig.api.kubeConfig(name));
      const status = new StatusPublisher({ node: name, api: kube, logger, retry });
      const stateDir = path.join(nd, 'st');
      const exportAddress = { kind: 'unix' as const, path: path.join(nd, 'nbd.sock') };
      const peers = new ImagePeers({ self: name, backend, stateDir, exportAddress, logger, ...(o.seed ? { seed: o.seed } : {}) });
      const bootProfiles = o.bootProfiles ? new BootProfiles(logger) : undefined;
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
        ...(bootProfiles ? { bootProfiles } : {}),
        ...(o.sourceFailoverAfterMs !== undefined ? { sourceFailoverAfterMs: o.sourceFailoverAfterMs } : {}),
        ...(o.maxCount !== undefined ? { cache: { maxCount: o.maxCount } } : {}),
      });
      // Exports on unix sockets: a single-host rig, so peers' unix exports are accepted too.
      const cluster = new ClusterAgent({
        node: name,
        api: kube,
        agent,
        status,
        peers,
        ...(bootProfiles ? { bootProfiles } : {}),
        imageExportAddress: exportAddress,
        podResources: new PodResourcesClient(socket),
        logger,
        podResourcesPollMs: 100,
        retry,
        debounceMs: 10,
      });
      await backend.start();
      await cluster.start();
      const n = { name, backend, cluster, kubelet, slots, qsdStateDir };
      nodes.push(n);
      return n;
    },
    stop,
    kill: async (n) => {
      const i = nodes.indexOf(n);
      if (i >= 0) nodes.splice(i, 1);
      await n.cluster.stop();
      const pid = Number(await readFile(path.join(n.qsdStateDir, 'qsd.pid'), 'utf8'));
      // In one tick: the backend is closing before it sees the exit, so it does not restart the daemon.
      process.kill(pid, 'SIGKILL');
      await n.backend.close();
      n.kubelet.forceShutdown();
    },
    stopAll,
    schedule: (n, vmi, uid, disk = {}) =>
      scheduleOn({ api: rig.api, node: n.name, slots: n.slots }, vmi, uid, 'slot-01', `- name: root\n  spdkVhostBlkDisk: {image: ${disk.image ?? 'base'}, capacity: ${disk.capacity ?? '16Mi'}}\n`),
    diskStatus: (vmi) => {
      const a = (rig.api.get(VMIS, vmi, 'default')?.metadata?.annotations as Record<string, string> | undefined)?.[STATUS_ANNOTATION];
      return a === undefined ? undefined : rootDisk(a);
    },
    cacheOf: (node, cachedImage = 'base') => {
      const o = rig.api.get(NICS, node);
      return o?.status === undefined ? undefined : imageEntry(o.status, cachedImage);
    },
    diskSocket: (node) => path.join(rig.dir, node, 'vh', 'slot-01', 'root'),
  };
  return rig;
}
