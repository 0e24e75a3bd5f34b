import { afterEach, describe, expect, it } from 'vitest';
import { startReadyNodes } from '../../src/controller/ready-nodes.js';
import { KubeApi } from '../../src/kube/api.js';
import { silentLogger } from '../../src/log.js';
import { InformerImageCatalog } from '../../webhooks/catalog.js';
import { mutate } from '../../webhooks/mutate.js';
import { VOLUMES_ANNOTATION } from '../../src/api/volumes.js';
import { FakeApiServer, type Obj } from '../helpers/fake-apiserver.js';
import { CIMGS, eventually, startClusterRig, stopClusterRig, type ClusterRig } from '../helpers/cluster-rig.js';

/**
 * Prefetch and cache-aware placement through the API server: the cluster-wide controller picks
 * the nodes and writes them to CachedImage status (keeping its choice across restarts), the
 * node agent warms what the status gives it with no VM on the node, and the webhook then
 * prefers the node that holds the image.
 */

const NODES = '/v1/nodes';
const NICS = 'kubevirt-spdk.io/v1alpha1/nodeimagecaches';
const NS = 'kubevirt-spdk';
const TIMING = { leaseDurationMs: 2_000, renewDeadlineMs: 600, retryPeriodMs: 100 };

let api: FakeApiServer | undefined;
let rig: ClusterRig | undefined;
const stops: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const s of stops.splice(0).reverse()) await s();
  await api?.close();
  api = undefined;
  if (rig) await stopClusterRig(rig);
  rig = undefined;
});

const nodeObj = (name: string, labels: Record<string, string> = {}, o: { unschedulable?: boolean; ready?: boolean } = {}): Obj => ({
  apiVersion: 'v1',
  kind: 'Node',
  metadata: { name, labels: { 'kubernetes.io/hostname': name, ...labels } },
  spec: o.unschedulable ? { unschedulable: true } : {},
  status: { conditions: [{ type: 'Ready', status: o.ready === false ? 'False' : 'True' }] },
});
const nodeCache = (node: string, ready: string[] = []): Obj => ({
  apiVersion: 'kubevirt-spdk.io/v1alpha1',
  kind: 'NodeImageCache',
  metadata: { name: node },
  status: { backend: 'spdk', summary: '', usedBytes: 0, updatedAt: new Date().toISOString(), images: ready.map((name) => ({ name, phase: 'ready' })) },
});
const cachedImage = (name: string, prefetch?: unknown): Obj => ({
  apiVersion: 'kubevirt-spdk.io/v1alpha1',
  kind: 'CachedImage',
  metadata: { name },
  spec: { source: { hostPath: { path: `/images/${name}.raw` } }, ...(prefetch ? { prefetch } : {}) },
});
type Status = { readyNodes?: number; readyNodeNames?: string[]; prefetchNodes?: string[] };
const statusOf = (s: FakeApiServer, name: string): Status => (s.get(CIMGS, name)?.status ?? {}) as Status;

async function controller(s: FakeApiServer, id: string): Promise<Awaited<ReturnType<typeof startReadyNodes>>> {
  const c = await startReadyNodes({ api: new KubeApi(s.kubeConfig(id)), logger: silentLogger, namespace: NS, identity: id, retry: { initialMs: 50, maxMs: 200 }, ...TIMING });
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await c.stop();
  };
  stops.push(stop);
  return { ...c, stop };
}

describe('prefetch: the controller chooses the nodes', () => {
  it('prefers a node that holds the image, skips cordoned, NotReady and agent-less nodes, resolves selectors, and keeps its choice across a restart', async () => {
    api = await FakeApiServer.start();
    const s = api;
    for (const n of ['n1', 'n2', 'n3', 'n4']) s.put(NODES, nodeObj(n, { zone: n === 'n4' ? 'z2' : 'z1' }));
    s.put(NODES, nodeObj('cordoned', { zone: 'z1' }, { unschedulable: true }));
    s.put(NODES, nodeObj('down', { zone: 'z1' }, { ready: false }));
    s.put(NODES, nodeObj('no-agent', { zone: 'z1' }));
    for (const n of ['n1', 'n2', 'n4', 'cordoned', 'down']) s.put(NICS, nodeCache(n, n === 'n4' ? ['fedora'] : []));
    s.put(NICS, nodeCache('n3'));
    s.put(CIMGS, cachedImage('fedora', { count: 2 }));
    s.put(CIMGS, cachedImage('zonal', { nodeSelector: { matchLabels: { zone: 'z1' } } }));
    s.put(CIMGS, cachedImage('plain'));

    const first = await controller(s, 'replica-a');
    const fedora = await eventually('fedora prefetch chosen', () => statusOf(s, 'fedora').prefetchNodes?.length === 2 && statusOf(s, 'fedora').prefetchNodes);
    expect(fedora).toContain('n4');
    expect(fedora.every((n) => ['n1', 'n2', 'n3', 'n4'].includes(n))).toBe(true);
    expect(await eventually('zonal resolved', () => statusOf(s, 'zonal').prefetchNodes)).toEqual(['n1', 'n2', 'n3']);
    expect(statusOf(s, 'fedora')).toMatchObject({ readyNodes: 1, readyNodeNames: ['n4'] });
    expect(statusOf(s, 'plain').prefetchNodes).toBeUndefined();

    // Restart (a new leader): nothing changes, so nothing is written.
    await first.stop();
    const patchesBefore = s.patches.filter((p) => p.resource === CIMGS).length;
    const second = await controller(s, 'replica-b');
    await eventually('the new replica leads', () => second.elector.leading || undefined);
    // A new image is written by the new leader: by then it has seen everything else too.
    s.put(CIMGS, cachedImage('probe'));
    await eventually('the new leader writes', () => statusOf(s, 'probe').readyNodes === 0 || undefined);
    await second.controller.drain();
    expect(statusOf(s, 'fedora').prefetchNodes).toEqual(fedora);
    expect(s.patches.filter((p) => p.resource === CIMGS).slice(patchesBefore).map((p) => p.name)).toEqual(['probe']);

    // A chosen node is cordoned: only it is replaced. A label change moves the selector's set.
    const gone = fedora.find((n) => n !== 'n4') as string;
    s.put(NODES, nodeObj(gone, { zone: 'z1' }, { unschedulable: true }));
    const next = await eventually('replaced', () => {
      const p = statusOf(s, 'fedora').prefetchNodes ?? [];
      return p.length === 2 && !p.includes(gone) && p;
    });
    expect(next).toContain('n4');
    s.put(NODES, nodeObj('n4', { zone: 'z1' }));
    await eventually('n4 joins zonal', () => statusOf(s, 'zonal').prefetchNodes?.includes('n4') || undefined);
    // The prefetch is removed: the list goes.
    s.put(CIMGS, { ...cachedImage('fedora'), status: s.get(CIMGS, 'fedora')?.status } as Obj);
    await eventually('fedora prefetch cleared', () => statusOf(s, 'fedora').prefetchNodes === undefined || undefined);
  }, 30_000);
});

describe('prefetch end to end: warmed by the agent, then preferred by the webhook', () => {
  it('the node agent imports the image with no VM, the controller publishes it, the webhook prefers the node', async () => {
    rig = await startClusterRig({ node: 'node-a', lvstoreMiB: 256 });
    const r = rig;
    r.api.put(NODES, nodeObj('node-a'));
    const base = r.api.get(CIMGS, 'base') as Obj & { spec: Record<string, unknown> };
    r.api.put(CIMGS, { ...base, spec: { ...base.spec, prefetch: { count: 1 } } });
    await r.cluster.start();

    await eventually('node-a chosen', () => statusOf(r.api, 'base').prefetchNodes?.includes('node-a') || undefined);
    await eventually('base warmed on node-a (no VMI there)', async () => (await r.backend.observe()).images.some((i) => i.name === 'base' && i.phase === 'ready') || undefined);
    await eventually('readyNodeNames names node-a', () => statusOf(r.api, 'base').readyNodeNames?.includes('node-a') || undefined);
    expect(r.api.list('kubevirt.io/v1/virtualmachineinstances')).toEqual([]);

    const catalog = await InformerImageCatalog.forCluster(silentLogger, { kubeConfig: r.api.kubeConfig('webhook'), backoff: { initialMs: 50, maxMs: 200 } });
    void catalog.start();
    stops.push(() => catalog.stop());
    await eventually('catalog synced', () => catalog.synced() || undefined);
    await eventually('catalog sees node-a', () => catalog.get('base')?.readyNodeNames?.includes('node-a') || undefined);
    const vmi = { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', metadata: { name: 'vm1', namespace: 'default', annotations: { [VOLUMES_ANNOTATION]: '- {name: root, spdkVhostBlkDisk: {image: base, capacity: 1Gi}}' } }, spec: { domain: { devices: {} } } };
    const res = mutate({ uid: 'u', kind: { group: 'kubevirt.io', version: 'v1', kind: 'VirtualMachineInstance' }, operation: 'CREATE', object: vmi }, catalog, { sidecarImage: 'example.org/kubevirt-spdk:test' });
    expect(res.allowed).toBe(true);
    const ops = JSON.parse(Buffer.from(res.patch ?? '', 'base64').toString('utf8')) as Array<{ path: string; value: unknown }>;
    expect(ops.find((o) => o.path === '/spec/affinity')?.value).toEqual({
      nodeAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 50, preference: { matchFields: [{ key: 'metadata.name', operator: 'In', values: ['node-a'] }] } }] },
    });
  }, 60_000);
});
