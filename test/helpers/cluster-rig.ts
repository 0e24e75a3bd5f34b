/**
 * One node in cluster mode for tests: the SPDK simulator, a real SpdkBackend, a fake API server
 * (with a CachedImage "base"), a fake kubelet PodResources server and the ClusterAgent; beside
 * it, as in a cluster, the one writer of CachedImage readyNodes (leading, no election here).
 */
import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { createSpdkBackend, type SpdkBackend } from '../../src/backend/spdk/index.js';
import { ReadyNodesController } from '../../src/controller/ready-nodes.js';
import { KubeApi } from '../../src/kube/api.js';
import { NodeAgent } from '../../src/agent/agent.js';
import { ClusterAgent } from '../../src/kube/cluster.js';
import { StatusPublisher } from '../../src/kube/status-publisher.js';
import { PodResourcesClient, type PodSlot } from '../../src/kube/podresources.js';
import { silentLogger, type Logger } from '../../src/log.js';
import { SpdkSimulator } from '../../testing/spdk-sim/index.js';
import { FakeApiServer, type Obj } from './fake-apiserver.js';
import { startFakePodResources } from './fake-podresources.js';
import { until } from './process.js';

export const VMIS = 'kubevirt.io/v1/virtualmachineinstances';
export const PODS = '/v1/pods';
export const CIMGS = 'kubevirt-spdk.io/v1alpha1/cachedimages';
const OWNER = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };

export interface ClusterRig {
  dir: string;
  node: string;
  sim: SpdkSimulator;
  backend: SpdkBackend;
  api: FakeApiServer;
  kubelet: grpc.Server;
  slots: PodSlot[];
  cluster: ClusterAgent;
  /** The cluster-wide readyNodes writer, when the rig runs one. */
  readyNodes: ReadyNodesController | undefined;
}

export interface ClusterRigOptions {
  node: string;
  lvstoreMiB: number;
  logger?: Logger;
  /** Called before the agent exists, e.g. to record the backend's deletions. */
  instrument?: (backend: SpdkBackend, api: FakeApiServer) => void;
  /** Run the readyNodes controller beside the agent (default true). */
  readyNodes?: boolean;
}

export async function startClusterRig(opts: ClusterRigOptions): Promise<ClusterRig> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cl-'));
  const vhost = path.join(dir, 'vh');
  await mkdir(vhost);
  const image = path.join(dir, 'base.raw');
  await writeFile(image, '');
  await truncate(image, 8 * 2 ** 20);
  const sim = new SpdkSimulator({ socketPath: path.join(dir, 'spdk.sock'), vhostDir: vhost, stateDir: path.join(dir, 'sim') });
  await sim.start();
  const backend = createSpdkBackend({
    socketPath: path.join(dir, 'spdk.sock'),
    vhostDir: vhost,
    stateDir: path.join(dir, 'st', 'spdk'),
    lvstore: { baseBdev: { kind: 'aio', filename: path.join(dir, 'lvs.img'), sizeMiB: opts.lvstoreMiB, blockSize: 512 } },
  });
  const api = await FakeApiServer.start();
  opts.instrument?.(backend, api);
  api.put(CIMGS, { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name: 'base' }, spec: { source: { hostPath: { path: image } } } });
  const { server: kubelet, socket, slots } = await startFakePodResources(dir);
  // The parts are built here and injected, as a binary's composition root does.
  const logger = opts.logger ?? silentLogger;
  const retry = { initialMs: 50, maxMs: 200 };
  const kube = new KubeApi(api.kubeConfig('agent'));
  const status = new StatusPublisher({ node: opts.node, api: kube, logger, retry });
  const agent = new NodeAgent({
    backend,
    stateDir: path.join(dir, 'st'),
    socket: { ...OWNER, mode: 0o660 },
    orphanGraceMs: 0,
    resyncMs: 200,
    node: opts.node,
    logger,
    onVmiStatus: status.onVmiStatus,
  });
  const cluster = new ClusterAgent({ node: opts.node, api: kube, agent, status, podResources: new PodResourcesClient(socket), logger, podResourcesPollMs: 100, retry, debounceMs: 10 });
  const readyNodes = opts.readyNodes === false ? undefined : new ReadyNodesController({ api: new KubeApi(api.kubeConfig('controller')), logger, retry });
  await readyNodes?.start();
  readyNodes?.lead();
  await backend.start();
  return { dir, node: opts.node, sim, backend, api, kubelet, slots, cluster, readyNodes };
}

export async function stopClusterRig(r: ClusterRig): Promise<void> {
  await r.cluster.stop();
  await r.readyNodes?.stop();
  await r.backend.close();
  await r.sim.stop();
  r.kubelet.forceShutdown();
  await r.api.close();
  await rm(r.dir, { recursive: true, force: true });
}

export function vmiObject(name: string, uid: string, volumes: string, node: string): Obj {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name, namespace: 'default', uid, labels: { 'kubevirt.io/nodeName': node }, annotations: { 'kubevirt-spdk.io/volumes': volumes } },
    spec: { domain: { devices: { disks: [] } } },
  };
}

/** A virt-launcher pod of the VMI with `uid` on `node`. */
export function launcherPod(name: string, uid: string, node: string, phase = 'Running'): Obj {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: 'default', labels: { 'kubevirt.io': 'virt-launcher', 'kubevirt.io/created-by': uid } },
    spec: { nodeName: node, containers: [{ name: 'compute', image: 'virt-launcher' }] },
    status: { phase },
  };
}

/** What KubeVirt would have: the VMI on this node, its launcher pod, the pod's slot. */
export function schedule(r: Pick<ClusterRig, 'api' | 'node' | 'slots'>, name: string, uid: string, slot: string, volumes: string): void {
  r.api.put(VMIS, vmiObject(name, uid, volumes, r.node));
  r.api.put(PODS, launcherPod(`virt-launcher-${name}`, uid, r.node));
  r.slots.push({ namespace: 'default', pod: `virt-launcher-${name}`, container: 'compute', slot });
}

/** `until` with the cluster tests' bounds: a shorter time-out, a faster poll. */
export const eventually = <T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 20_000): Promise<T> =>
  until(what, fn, timeoutMs, 25);
