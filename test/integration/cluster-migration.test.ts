import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SlotStatusSchema, VmiStatusSchema } from '../../src/api/status.js';
import { STATUS_ANNOTATION } from '../../src/api/volumes.js';
import { diskId } from '../../src/contract/index.js';
import { exportNqn } from '../../src/backend/remote.js';
import { createSpdkBackend, type SpdkBackend } from '../../src/backend/spdk/index.js';
import { diskSourceControllerName } from '../../src/backend/spdk/naming.js';
import { MigrationExportsSchema, MigrationHydratedSchema, REASON_ABORTED, REASON_REFUSED, createMigratingClusterAgent } from '../../src/kube/migration.js';
import { QsdBackend } from '../../src/backend/qsd/index.js';
import { hasCommand } from '../helpers/process.js';
import { PodResourcesClient, type PodSlot } from '../../src/kube/podresources.js';
import { createLogger, silentLogger } from '../../src/log.js';
import { createMetrics, type Metrics } from '../../src/metrics/metrics.js';
import { NvmfFabric, SpdkSimulator } from '../../testing/spdk-sim/index.js';
import { PODS, VMIS, eventually as until, launcherPod, vmiObject } from '../helpers/cluster-rig.js';
import { FakeApiServer, type Obj } from '../helpers/fake-apiserver.js';
import { startFakePodResources } from '../helpers/fake-podresources.js';

/**
 * Live migration in cluster mode, two agents in one process: node A and node B each with an SPDK
 * simulator (sharing one NVMe-oF fabric), a real SpdkBackend and a fake kubelet PodResources
 * server; one fake API server. The test plays KubeVirt: it sets `status.migrationState` on the
 * VMI, adds the target pod, then marks the migration completed, failed or aborted.
 */

const VMIMS = 'kubevirt.io/v1/virtualmachineinstancemigrations';
const NODE_CACHES = 'kubevirt-spdk.io/v1alpha1/nodeimagecaches';
const EVENTS = '/v1/events';
const OWNER = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
const UID = 'uid-m1';
const DISK = diskId(UID, 'root');
const VOLUMES = '- name: root\n  spdkVhostBlkDisk: {blank: {}, capacity: 8Mi}\n';

interface Node {
  name: string;
  dir: string;
  simOpts: ConstructorParameters<typeof SpdkSimulator>[0];
  sim: SpdkSimulator;
  backend: SpdkBackend;
  kubelet: grpc.Server;
  slots: PodSlot[];
  metrics: Metrics;
  agent: ReturnType<typeof createMigratingClusterAgent>;
}
interface Rig {
  dir: string;
  api: FakeApiServer;
  a: Node;
  b: Node;
}
let rig: Rig | undefined;

async function startNode(dir: string, name: string, fabric: NvmfFabric, api: FakeApiServer): Promise<Node> {
  const d = path.join(dir, name);
  const vhost = path.join(d, 'vh');
  await mkdir(vhost, { recursive: true });
  const simOpts = { socketPath: path.join(d, 'spdk.sock'), vhostDir: vhost, stateDir: path.join(d, 'sim'), fabric };
  const sim = new SpdkSimulator(simOpts);
  await sim.start();
  const backend = createSpdkBackend({
    socketPath: simOpts.socketPath,
    vhostDir: vhost,
    stateDir: path.join(d, 'st', 'spdk'),
    lvstore: { baseBdev: { kind: 'aio', filename: path.join(d, 'lvs.img'), sizeMiB: 128, blockSize: 512 } },
  });
  const { server: kubelet, socket: prSock, slots } = await startFakePodResources(d);
  const kc = api.kubeConfig('agent');
  const metrics = createMetrics();
  const agent = createMigratingClusterAgent({
    node: name,
    kubeConfig: kc,
    podResources: new PodResourcesClient(prSock),
    agent: { backend, stateDir: path.join(d, 'st'), socket: { ...OWNER, mode: 0o660 }, orphanGraceMs: 0, resyncMs: 200, metrics },
    logger: process.env.CLUSTER_TEST_DEBUG ? createLogger(`agent-${name}`, 'debug') : silentLogger,
    podResourcesPollMs: 100,
    retry: { initialMs: 50, maxMs: 200 },
    debounceMs: 10,
    exportAddress: { kind: 'tcp', host: '127.0.0.1', port: 4420 },
    migrationPollMs: 100,
  });
  await backend.start();
  return { name, dir: d, simOpts, sim, backend, kubelet, slots, metrics, agent };
}

beforeEach(async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cm-'));
  const api = await FakeApiServer.start();
  const fabric = new NvmfFabric();
  rig = { dir, api, a: await startNode(dir, 'node-a', fabric, api), b: await startNode(dir, 'node-b', fabric, api) };
});

afterEach(async () => {
  if (!rig) return;
  const r = rig;
  rig = undefined;
  for (const n of [r.a, r.b]) {
    await n.agent.stop();
    await n.backend.close();
    await n.sim.stop();
    n.kubelet.forceShutdown();
  }
  await r.api.close();
  await rm(r.dir, { recursive: true, force: true });
});

// ---- the test plays KubeVirt (both rigs: an API server and two nodes with slots and an agent) ----

/** What the scenario steps need of a node, whatever its backend. */
interface NodeLike {
  name: string;
  slots: PodSlot[];
  agent: { start(): Promise<void> };
}
interface Pair {
  api: FakeApiServer;
  a: NodeLike;
  b: NodeLike;
}

const pod = (name: string, node: string, phase?: string): Obj => launcherPod(name, UID, node, phase);

const vmiNow = (api: FakeApiServer): Obj => {
  const o = api.get(VMIS, 'vm1', 'default');
  if (!o) throw new Error('vm1 is gone');
  return o;
};
const annotations = (api: FakeApiServer) => (vmiNow(api).metadata?.annotations ?? {}) as Record<string, string>;
const vmiStatus = (api: FakeApiServer) => {
  const a = annotations(api)[STATUS_ANNOTATION];
  return a === undefined ? undefined : VmiStatusSchema.parse(JSON.parse(a));
};
/** What a node's agent says stands alone there after a migration: its NodeImageCache's `migrationHydrated`. */
const saidHydrated = (api: FakeApiServer, node: string) =>
  MigrationHydratedSchema.parse((api.get(NODE_CACHES, node)?.status as { migrationHydrated?: unknown } | undefined)?.migrationHydrated ?? []);
/** What a node's agent exports for migrations: its NodeImageCache's `migrationExports`. */
const saidExported = (api: FakeApiServer, node: string) =>
  MigrationExportsSchema.parse((api.get(NODE_CACHES, node)?.status as { migrationExports?: unknown } | undefined)?.migrationExports ?? []);
/** The channels a VMI's owner could forge are not used. */
const OLD_HYDRATED_ANNOTATION = 'kubevirt-spdk.io/migration-hydrated';
const OLD_EXPORTS_ANNOTATION = 'kubevirt-spdk.io/migration-exports';

/** Changes the VMI as KubeVirt would (labels and status), keeping what the agents wrote. */
function updateVmi(api: FakeApiServer, labels: Record<string, string>, migrationState: Record<string, unknown> | undefined): void {
  const o = vmiNow(api);
  const meta = o.metadata as { labels?: Record<string, string>; resourceVersion?: string };
  delete meta.resourceVersion;
  api.put(VMIS, { ...o, metadata: { ...meta, labels }, status: migrationState ? { migrationState } : {} });
}

/** vm1 runs on node-a at slot-01; both agents started. */
async function runningOnA(p: Pair): Promise<void> {
  p.api.put(VMIS, vmiObject('vm1', UID, VOLUMES, 'node-a'));
  p.api.put(PODS, pod('virt-launcher-vm1-src', 'node-a'));
  p.a.slots.push({ namespace: 'default', pod: 'virt-launcher-vm1-src', container: 'compute', slot: 'slot-01' });
  await Promise.all([p.a.agent.start(), p.b.agent.start()]);
  await until('vm1 Ready on node-a', () => vmiStatus(p.api)?.disks[0]?.phase === 'Ready');
}

/** `virtctl migrate vm1`: the migration object `name`, the target pod with its slot on `to`, migrationState. */
function startMigration(api: FakeApiServer, name: string, from: NodeLike, to: NodeLike, slot: string, extra: Record<string, unknown> = {}): Record<string, unknown> & { targetPod: string } {
  const vmim = api.put(VMIMS, { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace: 'default' }, spec: { vmiName: 'vm1' } });
  const targetPod = `virt-launcher-${name}`;
  api.put(PODS, pod(targetPod, to.name));
  to.slots.push({ namespace: 'default', pod: targetPod, container: 'compute', slot });
  const state = { migrationUid: vmim.metadata?.uid as string, sourceNode: from.name, targetNode: to.name, targetPod, mode: 'PreCopy', startTimestamp: new Date().toISOString(), ...extra };
  updateVmi(api, { 'kubevirt.io/nodeName': from.name, 'kubevirt.io/migrationTargetNodeName': to.name }, state);
  return state;
}

/** KubeVirt: the migration completed; the VMI lives on `to` and the source pod is done. */
function complete(api: FakeApiServer, state: Record<string, unknown>, from: NodeLike, to: NodeLike): void {
  for (const s of from.slots) api.put(PODS, pod(s.pod, from.name, 'Succeeded'));
  from.slots.splice(0);
  updateVmi(api, { 'kubevirt.io/nodeName': to.name }, { ...state, completed: true, endTimestamp: new Date().toISOString() });
}

// ---- the spdk rig: simulator state ------------------------------------------------------------------

const controllers = async (n: Node) => (await n.backend.observe()).controllers;
const controller = async (n: Node, name: string) => (await controllers(n)).find((c) => c.name === name);
const exported = (n: Node) => JSON.stringify(n.sim.snapshot()).includes(exportNqn(DISK));
const slotFile = async (n: Node, slot: string) => SlotStatusSchema.parse(JSON.parse(await readFile(path.join(n.dir, 'st', 'slots', `${slot}.json`), 'utf8')));
const migrations = async (n: Node, outcome: string) => (await n.metrics.migrations.get()).values.find((v) => v.labels.outcome === outcome)?.value ?? 0;
const events = (r: Rig, reason: string) => r.api.list(EVENTS).filter((e) => e.reason === reason);

/** B's lazy clone of A's export: the disk in B's lvstore and the NVMe-oF controller it reads through. */
const bHoldsClone = async (r: Rig): Promise<boolean> => (await r.b.backend.observe()).disks.some((d) => d.id === DISK);
const bReadsFromA = (r: Rig): boolean => JSON.stringify(r.b.sim.snapshot()).includes(diskSourceControllerName(DISK));

/**
 * Target ready: B serves, at its slot, its own lazy clone of A's export (owned by B, reading
 * through the NVMe-oF controller), and the slot file says ready; A still exports.
 */
async function targetReady(r: Rig): Promise<void> {
  await until('A published its exports in its NodeImageCache', () => saidExported(r.api, 'node-a').length > 0);
  expect(saidExported(r.api, 'node-a')).toMatchObject([{ vmi: UID, disk: 'root' }]);
  expect(annotations(r.api)[OLD_EXPORTS_ANNOTATION]).toBeUndefined();
  await until('slot-05 ready on node-b', async () => (await slotFile(r.b, 'slot-05').catch(() => undefined))?.ready);
  const c = await controller(r.b, 'slot-05/root');
  expect(c?.diskRef).toBe(`kvs/${DISK}`);
  expect(await bHoldsClone(r)).toBe(true);
  expect(bReadsFromA(r)).toBe(true);
  expect(Object.keys(r.b.agent.cluster.agent.ownedNow())).toEqual([DISK]);
  expect(exported(r.a)).toBe(true);
  // Nothing is copied before switchover: no hydration is reported yet.
  expect(vmiStatus(r.api)?.disks[0]?.dataNode).toBe('node-a');
  // The source VM still runs from its own controller.
  expect((await controller(r.a, 'slot-01/root'))?.diskRef).toContain(DISK);
}

describe('live migration in cluster mode', () => {
  it('hands a node-local disk over: B serves a clone of the export at the target slot, hydrates after switchover, and A lets go once B has every byte', async () => {
    const r = rig!;
    await runningOnA(r);
    const state = startMigration(r.api, 'mig1', r.a, r.b, 'slot-05');
    await targetReady(r);
    expect((await slotFile(r.b, 'slot-05')).vmi).toMatchObject({ name: 'vm1', uid: UID });
    expect(saidHydrated(r.api, 'node-b')).toEqual([]);

    // KubeVirt: completed; the VMI now lives on node-b and the source pod is done.
    complete(r.api, state, r.a, r.b);

    await until('A gave up its controller', async () => (await controller(r.a, 'slot-01/root')) === undefined);
    await until('B reports the disk Ready with its data on node-b', () => {
      const s = vmiStatus(r.api);
      return s?.node === 'node-b' && s.disks[0]?.phase === 'Ready' && s.disks[0].dataNode === 'node-b';
    });
    await until('B published in its NodeImageCache that root stands alone there', () => saidHydrated(r.api, 'node-b').length > 0);
    expect(saidHydrated(r.api, 'node-b')).toEqual([{ vmi: UID, migration: state.migrationUid, disk: 'root' }]);
    expect(annotations(r.api)[OLD_HYDRATED_ANNOTATION]).toBeUndefined();
    await until('A unexported and deleted the disk', async () => !exported(r.a) && !(await r.a.backend.observe()).disks.some((d) => d.id === DISK));
    await until('A owns nothing of vm1', () => Object.keys(r.a.agent.cluster.agent.ownedNow()).length === 0);
    await until('both nodes counted a success', async () => (await migrations(r.a, 'succeeded')) === 1 && (await migrations(r.b, 'succeeded')) === 1);
    // B no longer reads through A, and still serves its own disk at the slot.
    expect(bReadsFromA(r)).toBe(false);
    await r.a.agent.cluster.agent.reconcile('test');
    await r.b.agent.cluster.agent.reconcile('test');
    expect((await controller(r.b, 'slot-05/root'))?.diskRef).toBe(`kvs/${DISK}`);
    expect(await bHoldsClone(r)).toBe(true);
    expect((await slotFile(r.b, 'slot-05')).ready).toBe(true);
    expect(vmiStatus(r.api)).toMatchObject({ node: 'node-b', disks: [{ name: 'root', phase: 'Ready', dataNode: 'node-b' }] });

    // The VMI is deleted: B lets go of its controller and disk; A holds nothing either.
    r.api.put(PODS, pod(state.targetPod, 'node-b', 'Succeeded'));
    r.b.slots.splice(0);
    r.api.remove(VMIS, 'vm1', 'default');
    await until('B dropped controller and disk', async () => (await controllers(r.b)).length === 0 && !(await bHoldsClone(r)));
    expect(exported(r.a)).toBe(false);
    expect(await controllers(r.a)).toEqual([]);
  });

  it.each([
    ['failed', { failed: true }],
    ['aborted', { abortRequested: true, abortStatus: 'Succeeded' }],
  ] as const)('rolls back on B and leaves A serving when the migration %s', async (outcome, end) => {
    const r = rig!;
    await runningOnA(r);
    const state = startMigration(r.api, 'mig1', r.a, r.b, 'slot-05');
    await targetReady(r);

    r.api.put(PODS, pod(state.targetPod, 'node-b', 'Failed'));
    r.b.slots.splice(0);
    updateVmi(r.api, { 'kubevirt.io/nodeName': 'node-a' }, { ...state, ...end, completed: true, endTimestamp: new Date().toISOString() });

    // The journal forgets the clone in the same round that deletes it: wait for the round to end.
    await until('B tore down controller and its clone', async () => (await controllers(r.b)).length === 0 && !(await bHoldsClone(r)) && !bReadsFromA(r) && Object.keys(r.b.agent.cluster.agent.ownedNow()).length === 0);
    expect(Object.keys(r.b.agent.cluster.agent.ownedNow())).toEqual([]);
    await until('A dropped the export and unpublished it', () => !exported(r.a) && saidExported(r.api, 'node-a').length === 0);
    await until(`both nodes counted ${outcome}`, async () => (await migrations(r.a, outcome)) === 1 && (await migrations(r.b, outcome)) === 1);
    // A is untouched: same controller, disk Ready, reported by A.
    expect((await controller(r.a, 'slot-01/root'))?.diskRef).toContain(DISK);
    expect((await r.a.backend.observe()).disks.map((d) => d.id)).toContain(DISK);
    expect(vmiStatus(r.api)).toMatchObject({ node: 'node-a', disks: [{ name: 'root', phase: 'Ready', dataNode: 'node-a' }] });
    expect(saidHydrated(r.api, 'node-b')).toEqual([]);
    expect(await migrations(r.a, 'succeeded')).toBe(0);
  });

  it('refuses post-copy with a Warning Event and makes nothing on B', async () => {
    const r = rig!;
    await runningOnA(r);
    startMigration(r.api, 'mig1', r.a, r.b, 'slot-05', { mode: 'PostCopy' });
    const ev = await until('a refusal Event on the VMI', () => events(r, REASON_REFUSED)[0]);
    expect(ev).toMatchObject({ type: 'Warning', involvedObject: { kind: 'VirtualMachineInstance', name: 'vm1', uid: UID } });
    expect(String(ev.message)).toMatch(/post-copy/);
    await until('refusals counted', async () => (await migrations(r.a, 'refused')) === 1 && (await migrations(r.b, 'refused')) === 1);
    await r.b.agent.cluster.agent.reconcile('test');
    expect(await controllers(r.b)).toEqual([]);
    expect(exported(r.a)).toBe(false);
    await expect(slotFile(r.b, 'slot-05')).rejects.toThrow();
  });

  it('cancels the migration (deletes the migration object) when the source backend restarts mid-migration', async () => {
    const r = rig!;
    await runningOnA(r);
    startMigration(r.api, 'mig1', r.a, r.b, 'slot-05');
    await targetReady(r);
    expect(r.api.get(VMIMS, 'mig1', 'default')).toBeDefined();
    const made = r.a.agent.migration.records.get(UID)?.backendInstance;
    expect(made).toMatch(/^[0-9a-f]{16}$/);

    await r.a.sim.stop();
    r.a.sim = new SpdkSimulator(r.a.simOpts);
    await r.a.sim.start();

    await until('the migration object is deleted', () => r.api.get(VMIMS, 'mig1', 'default') === undefined);
    // A new process, told by its instance (not by the reconnect alone).
    const now = (await r.a.backend.health()).instance;
    expect(now).toMatch(/^[0-9a-f]{16}$/);
    expect(now).not.toBe(made);
    const ev = await until('an abort Event on the VMI', () => events(r, REASON_ABORTED)[0]);
    expect(String(ev.message)).toMatch(/restarted/);
    // Live recovery still brings the source VM's controller back.
    await until('A serves vm1 again', async () => (await controller(r.a, 'slot-01/root'))?.diskRef.includes(DISK));
  });

  it('goes on when the source RPC connection drops and comes back to the same spdk_tgt (a reconnect is no restart)', async () => {
    const r = rig!;
    await runningOnA(r);
    const state = startMigration(r.api, 'mig1', r.a, r.b, 'slot-05');
    await targetReady(r);
    const made = r.a.agent.migration.records.get(UID)?.backendInstance;
    expect(made).toMatch(/^[0-9a-f]{16}$/);

    // The target drops A's RPC connection; A's client reconnects to the same process.
    let reconnected = false;
    let healthAfter = 0;
    const health = r.a.backend.health.bind(r.a.backend);
    r.a.backend.health = async () => {
      const h = await health();
      if (reconnected) healthAfter++;
      return h;
    };
    r.a.backend.once('connected', () => {
      reconnected = true;
    });
    r.a.sim.injectFault({ method: 'bdev_lvol_get_lvols', action: 'close' });
    await until('A reconnected and asked its backend which process it is', () => healthAfter > 0);
    // Let what the reconnect would trigger (an abort, a resync) run.
    await new Promise((res) => setTimeout(res, 300));
    await r.a.agent.migration.idle();
    expect(r.a.agent.migration.records.get(UID)?.abort).toBeUndefined();
    expect(r.a.agent.migration.records.get(UID)?.backendInstance).toBe(made);
    expect(r.api.get(VMIMS, 'mig1', 'default')).toBeDefined();
    expect(events(r, REASON_ABORTED)).toEqual([]);
    expect(exported(r.a)).toBe(true);

    // The migration then completes as usual: B hydrates and owns the disk, A lets go.
    complete(r.api, state, r.a, r.b);
    await until('B reports the disk Ready with its data on node-b', () => vmiStatus(r.api)?.disks[0]?.dataNode === 'node-b');
    await until('A unexported and deleted the disk', async () => !exported(r.a) && !(await r.a.backend.observe()).disks.some((d) => d.id === DISK));
    await until('both nodes counted a success', async () => (await migrations(r.a, 'succeeded')) === 1 && (await migrations(r.b, 'succeeded')) === 1);
    expect(await migrations(r.a, 'aborted')).toBe(0);
  });
});

// ---- the data moves: two qemu-storage-daemon nodes (their driver clones and hydrates) -------------

interface QNode {
  name: string;
  dir: string;
  backend: QsdBackend;
  kubelet: grpc.Server;
  slots: PodSlot[];
  agent: ReturnType<typeof createMigratingClusterAgent>;
  /** A new agent process on the same state (an agent restart). */
  newAgent(): ReturnType<typeof createMigratingClusterAgent>;
}
let qrig: { dir: string; api: FakeApiServer; a: QNode; b: QNode } | undefined;

async function startQsdNode(dir: string, name: string, api: FakeApiServer): Promise<QNode> {
  const d = path.join(dir, name);
  await mkdir(path.join(d, 'vh'), { recursive: true });
  const backend = new QsdBackend({ stateDir: path.join(d, 'qsd'), vhostDir: path.join(d, 'vh'), managed: true, restartDelayMs: 50, hydrationRetryMs: 100 });
  await backend.start();
  const { server: kubelet, socket: prSock, slots } = await startFakePodResources(d);
  const newAgent = () => createMigratingClusterAgent({
    node: name,
    kubeConfig: api.kubeConfig('agent'),
    podResources: new PodResourcesClient(prSock),
    agent: { backend, stateDir: path.join(d, 'st'), socket: { ...OWNER, mode: 0o660 }, orphanGraceMs: 0, resyncMs: 200, hydrationPollMs: 100 },
    logger: process.env.CLUSTER_TEST_DEBUG ? createLogger(`agent-${name}`, 'debug') : silentLogger,
    podResourcesPollMs: 100,
    retry: { initialMs: 50, maxMs: 200 },
    debounceMs: 10,
    exportAddress: { kind: 'unix', path: path.join(d, 'nbd.sock') },
    migrationPollMs: 100,
  });
  return { name, dir: d, backend, kubelet, slots, agent: newAgent(), newAgent };
}

const hasQsd = hasCommand('qemu-storage-daemon') && hasCommand('qemu-img');

describe.skipIf(!hasQsd)('live migration that moves the data (qsd nodes)', () => {
  beforeEach(async () => {
    // The spdk rig of the other scenarios is not used here.
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cmq-'));
    const api = await FakeApiServer.start();
    qrig = { dir, api, a: await startQsdNode(dir, 'node-a', api), b: await startQsdNode(dir, 'node-b', api) };
  });
  afterEach(async () => {
    const q = qrig;
    qrig = undefined;
    if (!q) return;
    for (const n of [q.a, q.b]) {
      await n.agent.stop();
      await n.backend.close();
      n.kubelet.forceShutdown();
    }
    await q.api.close();
    await rm(q.dir, { recursive: true, force: true });
  });

  const holds = async (n: QNode) => {
    const o = await n.backend.observe();
    const exports = await n.backend.qmpExecute<Array<{ type: string }>>('query-block-exports');
    return { disks: o.disks.map((d) => d.id), controllers: o.controllers.map((c) => c.name), exports: exports.map((e) => e.type), owned: Object.keys(n.agent.cluster.agent.ownedNow()) };
  };

  /** KubeVirt moves vm1 from `from` to `to` (new migration object, target pod and slot), up to the target being ready. */
  async function migrate(q: NonNullable<typeof qrig>, name: string, from: QNode, to: QNode, slot: string): Promise<Record<string, unknown>> {
    const state = startMigration(q.api, name, from, to, slot);
    await until(`${to.name} serves ${slot}`, async () => (await holds(to)).controllers.includes(`${slot}/root`));
    return state;
  }

  it('after switchover the source keeps its copy through restarts (the target agent, the source daemon) until the target has every byte', async () => {
    const q = qrig!;
    await runningOnA(q);
    const m1 = await migrate(q, 'mig1', q.a, q.b, 'slot-05');

    // A's daemon freezes: B's copy cannot make progress once the migration succeeded.
    const pid = Number((await readFile(path.join(q.a.dir, 'qsd', 'qsd.pid'), 'utf8')).trim());
    process.kill(pid, 'SIGSTOP');
    try {
      complete(q.api, m1, q.a, q.b);
      await until('B hydrating from A', () => vmiStatus(q.api)?.node === 'node-b' && vmiStatus(q.api)?.disks[0]?.migration?.phase !== undefined && vmiStatus(q.api)?.disks[0]?.dataNode === 'node-a');
      // B's agent restarts mid-copy: it resumes from its record; A keeps everything.
      await q.b.agent.stop();
      q.b.agent = q.b.newAgent();
      await q.b.agent.start();
      await until('B serves the disk again', async () => (await holds(q.b)).controllers.includes('slot-05/root'));
      expect(vmiStatus(q.api)?.disks[0]?.dataNode).toBe('node-a');
      expect(saidHydrated(q.api, 'node-b')).toEqual([]);
      expect(Object.keys(q.a.agent.cluster.agent.ownedNow())).toEqual([DISK]);
    } finally {
      // A's daemon dies for real (a new process comes): its exports are made again, B's copy resumes.
      process.kill(pid, 'SIGKILL');
    }
    await until('B has every byte: the data node is B', () => vmiStatus(q.api)?.disks[0]?.dataNode === 'node-b', 30_000);
    await until('A holds nothing of vm1', async () => JSON.stringify(await holds(q.a)) === JSON.stringify({ disks: [], controllers: [], exports: [], owned: [] }), 30_000);
    expect(await holds(q.b)).toMatchObject({ disks: [DISK], controllers: ['slot-05/root'] });
  }, 90_000);

  it('the target clones, hydrates after switchover and owns the disk; the source then holds nothing; and back again (A -> B -> A)', async () => {
    const q = qrig!;
    await runningOnA(q);

    const m1 = await migrate(q, 'mig1', q.a, q.b, 'slot-05');
    // B serves a clone of A's export (owned by B), not the export itself; A still serves its VM.
    expect((await holds(q.b)).owned).toEqual([DISK]);
    expect((await holds(q.a)).controllers).toEqual(['slot-01/root']);
    expect(saidHydrated(q.api, 'node-b')).toEqual([]);

    complete(q.api, m1, q.a, q.b);
    await until('B reports the disk Ready with its data on node-b', () => {
      const s = vmiStatus(q.api);
      return s?.node === 'node-b' && s.disks[0]?.phase === 'Ready' && s.disks[0].dataNode === 'node-b';
    });
    // B's word for A, written by B's planner right after (the status above is its agent's).
    await until('B published in its NodeImageCache that root stands alone there', () => saidHydrated(q.api, 'node-b').length > 0);
    expect(saidHydrated(q.api, 'node-b')).toEqual([{ vmi: UID, migration: m1.migrationUid, disk: 'root' }]);
    await until('A holds nothing of vm1 (no export, disk, controller, record of ownership)', async () => JSON.stringify(await holds(q.a)) === JSON.stringify({ disks: [], controllers: [], exports: [], owned: [] }));
    expect(await holds(q.b)).toMatchObject({ disks: [DISK], controllers: ['slot-05/root'] });

    // Right after, back to A: A clones B's disk, hydrates, and B lets go.
    const m2 = await migrate(q, 'mig2', q.b, q.a, 'slot-02');
    expect((await holds(q.a)).owned).toEqual([DISK]);
    complete(q.api, m2, q.b, q.a);
    await until('A reports the disk Ready with its data on node-a', () => {
      const s = vmiStatus(q.api);
      return s?.node === 'node-a' && s.disks[0]?.phase === 'Ready' && s.disks[0].dataNode === 'node-a';
    });
    await until('B holds nothing of vm1', async () => JSON.stringify(await holds(q.b)) === JSON.stringify({ disks: [], controllers: [], exports: [], owned: [] }));
    expect(await holds(q.a)).toMatchObject({ disks: [DISK], controllers: ['slot-02/root'] });
  }, 60_000);
});
