import { afterEach, describe, expect, it } from 'vitest';
import { READY_NODES_LEASE, startReadyNodes } from '../../src/controller/ready-nodes.js';
import { KubeApi } from '../../src/kube/api.js';
import { silentLogger } from '../../src/log.js';
import { FakeApiServer, type Obj } from '../helpers/fake-apiserver.js';
import { CIMGS, eventually, schedule, startClusterRig, stopClusterRig, type ClusterRig } from '../helpers/cluster-rig.js';

/**
 * CachedImage `status.readyNodes` has one writer in the cluster: two controller replicas against
 * one (fake) API server elect a leader on a Lease; only the leader patches, the other takes over
 * when the leader stops or can no longer reach the API server; node agents never patch it.
 */

const NICS = 'kubevirt-spdk.io/v1alpha1/nodeimagecaches';
const LEASES = 'coordination.k8s.io/v1/leases';
const NS = 'kubevirt-spdk';
/** Short, so that takeovers happen within a test; retry < renew deadline < lease duration. */
const TIMING = { leaseDurationMs: 2_000, renewDeadlineMs: 600, retryPeriodMs: 100 };

interface Replica {
  id: string;
  controller: Awaited<ReturnType<typeof startReadyNodes>>['controller'];
  elector: Awaited<ReturnType<typeof startReadyNodes>>['elector'];
  /** The readyNodes patches this replica made, as `image=count`. */
  writes: string[];
  /** Set `cut` to cut this replica off the API server (its Lease and patch calls fail). */
  net: { cut: boolean };
  stopped: boolean;
  stop(): Promise<void>;
}

let api: FakeApiServer | undefined;
const replicas: Replica[] = [];
let rig: ClusterRig | undefined;

afterEach(async () => {
  for (const r of replicas.splice(0)) if (!r.stopped) await r.stop();
  await api?.close();
  api = undefined;
  if (rig) await stopClusterRig(rig);
  rig = undefined;
});

const image = (name: string): Obj => ({ apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name }, spec: { source: { hostPath: { path: `/images/${name}.raw` } } } });
const nodeCache = (node: string, ready: string[]): Obj => ({
  apiVersion: 'kubevirt-spdk.io/v1alpha1',
  kind: 'NodeImageCache',
  metadata: { name: node },
  status: { backend: 'spdk', summary: ready.join(', '), usedBytes: 0, updatedAt: new Date().toISOString(), images: ready.map((name) => ({ name, phase: 'ready' })) },
});
const readyNodes = (s: FakeApiServer, name: string): number | undefined => (s.get(CIMGS, name)?.status as { readyNodes?: number } | undefined)?.readyNodes;

/** One replica: its own API client, whose readyNodes patches are recorded, and which a test can cut off the API server. */
async function replica(s: FakeApiServer, id: string, events: string[]): Promise<Replica> {
  const client = new KubeApi(s.kubeConfig(id));
  const writes: string[] = [];
  const net = { cut: false };
  const refused = (): Error => Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
  const patch = client.patchCachedImageStatus.bind(client);
  client.patchCachedImageStatus = async (name, status) => {
    if (net.cut) throw refused();
    writes.push(`${name}=${status.readyNodes}`);
    await patch(name, status);
  };
  const [get, create, replace] = [client.getLease.bind(client), client.createLease.bind(client), client.replaceLease.bind(client)];
  client.getLease = (...a) => (net.cut ? Promise.reject(refused()) : get(...a));
  client.createLease = (...a) => (net.cut ? Promise.reject(refused()) : create(...a));
  client.replaceLease = (...a) => (net.cut ? Promise.reject(refused()) : replace(...a));
  const started = await startReadyNodes({ api: client, logger: silentLogger, namespace: NS, identity: id, retry: { initialMs: 50, maxMs: 200 }, ...TIMING });
  started.elector.on('leading', () => events.push(`${id} leading`));
  started.elector.on('following', () => events.push(`${id} following`));
  const r: Replica = {
    id,
    controller: started.controller,
    elector: started.elector,
    writes,
    net,
    stopped: false,
    stop: async () => {
      r.stopped = true;
      await started.stop();
    },
  };
  replicas.push(r);
  return r;
}

/** Distinct writes, sorted (a write repeated before the watch echoed it back is the same write). */
const distinct = (w: string[]): string[] => [...new Set(w)].sort();

const leaderOf = (rs: Replica[]): Replica | undefined => {
  const leading = rs.filter((r) => r.elector.leading);
  expect(leading.length, `replicas leading at once: ${leading.map((r) => r.id).join(', ')}`).toBeLessThanOrEqual(1);
  return leading[0];
};

describe('CachedImage readyNodes: one writer, elected on a Lease', () => {
  it('only the leader patches; the other takes over when the leader stops, and when it loses the API server', async () => {
    api = await FakeApiServer.start();
    const s = api;
    s.put(CIMGS, image('fedora'));
    s.put(CIMGS, image('debian'));
    s.put(NICS, nodeCache('node-a', ['fedora']));
    s.put(NICS, nodeCache('node-b', ['fedora', 'debian']));
    const events: string[] = [];
    const rs = [await replica(s, 'replica-a', events), await replica(s, 'replica-b', events)];

    const first = await eventually('a leader', () => leaderOf(rs));
    const other = rs.find((r) => r !== first)!;
    await eventually('readyNodes counted', () => (readyNodes(s, 'fedora') === 2 && readyNodes(s, 'debian') === 1) || undefined);
    const lease = s.get(LEASES, READY_NODES_LEASE, NS)?.spec as { holderIdentity?: string; renewTime?: string; acquireTime?: string; leaseDurationSeconds?: number };
    expect(lease).toMatchObject({ holderIdentity: first.id, leaseDurationSeconds: 2 });
    // MicroTime: the API server parses exactly six fractional digits and refuses a Lease without them.
    expect(lease.renewTime).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    expect(lease.acquireTime).toMatch(/\.\d{6}Z$/);

    // The caches change; the follower sees the same informer events and writes nothing.
    s.put(NICS, nodeCache('node-a', ['fedora', 'debian']));
    await eventually('debian on two nodes', () => readyNodes(s, 'debian') === 2 || undefined);
    await first.controller.drain();
    expect(leaderOf(rs)).toBe(first);
    expect(other.writes).toEqual([]);
    expect(distinct(first.writes)).toEqual(['debian=1', 'debian=2', 'fedora=2']);

    // The leader stops (rolling update): it releases the Lease and the other takes over.
    await first.stop();
    await eventually('the other leads', () => other.elector.leading || undefined);
    s.remove(NICS, 'node-b');
    await eventually('node-b gone from the counts', () => (readyNodes(s, 'fedora') === 1 && readyNodes(s, 'debian') === 1) || undefined);
    expect(distinct(first.writes)).toEqual(['debian=1', 'debian=2', 'fedora=2']);
    expect(distinct(other.writes)).toEqual(['debian=1', 'fedora=1']);

    // A third replica joins; then the leader is cut off from the API server (a partition,
    // not a clean stop): it stops leading at its renew deadline, and only then does the
    // newcomer take the Lease, after it saw the Lease unrenewed for the whole lease duration.
    const third = await replica(s, 'replica-c', events);
    events.length = 0;
    other.net.cut = true;
    await eventually('the newcomer leads', () => third.elector.leading || undefined, 10_000);
    expect(events).toEqual(['replica-b following', 'replica-c leading']);
    s.put(NICS, nodeCache('node-c', ['fedora']));
    await eventually('node-c counted', () => readyNodes(s, 'fedora') === 2 || undefined);
    expect(distinct(third.writes)).toEqual(['fedora=2']);
    expect(distinct(other.writes)).toEqual(['debian=1', 'fedora=1']);
    expect((s.get(LEASES, READY_NODES_LEASE, NS)?.spec as { holderIdentity?: string; leaseTransitions?: number })).toMatchObject({ holderIdentity: 'replica-c', leaseTransitions: 2 });
  }, 30_000);

  it('node agents do not patch CachedImages', async () => {
    rig = await startClusterRig({ node: 'node-a', lvstoreMiB: 256, readyNodes: false });
    const r = rig;
    schedule(r, 'vm1', 'uid-1', 'slot-01', '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 1Gi}\n');
    await r.cluster.start();
    await eventually('NodeImageCache lists base ready', () => {
      const o = r.api.get(NICS, 'node-a') as { status?: { images?: Array<{ name: string; phase: string }> } } | undefined;
      return o?.status?.images?.some((i) => i.name === 'base' && i.phase === 'ready') || undefined;
    });
    await r.cluster.agent.reconcile('test');
    await r.cluster.flushWrites();
    expect(r.api.patches.filter((p) => p.resource === CIMGS)).toEqual([]);
    expect(r.api.get(CIMGS, 'base')?.status).toBeUndefined();
  });
});
