/**
 * Live migration with real QEMU: two qemu-storage-daemon backends, each with its node agent,
 * stand in for two nodes, the target reaching the source's node-local disk over NBD (on a unix
 * socket). The planner plans both nodes' migration intent from a scripted `migrationState`,
 * each agent's reconciler makes it so on the real backends (exports, attaches, controllers,
 * teardown), and QEMU migrates the running guest, which keeps writing its sequence.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NodeAgent } from '../../src/agent/agent.js';
import { buildDesired, type ViewVmi } from '../../src/agent/desired.js';
import type { DiskStatus } from '../../src/api/status.js';
import { parseVmi } from '../../src/api/vmi.js';
import { QsdBackend } from '../../src/backend/qsd/index.js';
import { nbdExportId } from '../../src/backend/qsd/nbd.js';
import type { ImageSpec } from '../../src/backend/types.js';
import { diskId } from '../../src/contract/index.js';
import { applySteps, migrationKey, planMigration, type CoordinatorInput, type MigrationPlan } from '../../src/migration/coordinator.js';
import type { MigrationJournal, MigrationState } from '../../src/migration/schemas.js';
import { ensureGuestBuilt, guestCmdline } from '../helpers/guest.js';
import { hasCommand } from '../helpers/process.js';
import { createGoldenImage, readDiskBytes } from '../helpers/qsd.js';
import { MigratableVm, migrate } from './migration-vm.js';

const execFileP = promisify(execFile);

// Needs the QEMU binaries (installed by hack/install-deps.sh); without them there is no VM to migrate.
const missing = !hasCommand('qemu-system-x86_64') || !hasCommand('qemu-storage-daemon');

const DISK = 'root';
const UID = 'vmi1';
const DISK_ID = diskId(UID, DISK);
const OWNER = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, mode: 0o660 };
const VMI = parseVmi({ metadata: { name: 'vm1', namespace: 'default', uid: UID, annotations: { 'kubevirt-spdk.io/volumes': `- name: ${DISK}\n  spdkVhostBlkDisk: {image: img, capacity: 64Mi}\n` } } });
const SRC_SLOT = 'slot-01';
const DST_SLOT = 'slot-07';

interface World {
  dir: string;
  src: QsdBackend;
  dst: QsdBackend;
  agents: { source: NodeAgent; target: NodeAgent };
  images: ImageSpec[];
  srcVm: MigratableVm;
  dstVm?: MigratableVm;
  journals: { source?: MigrationJournal; target?: MigrationJournal };
  overlay: string;
}

let world: World | undefined;
let guest: { kernel: string; initrd: string };

beforeAll(async () => {
  if (!missing) guest = await ensureGuestBuilt();
}, 300_000);

afterEach(async () => {
  const w = world;
  world = undefined;
  if (!w) return;
  await Promise.allSettled([w.srcVm.kill(), w.dstVm?.kill()]);
  await Promise.allSettled([w.agents.source.stop(), w.agents.target.stop()]);
  await Promise.allSettled([w.src.close(), w.dst.close()]);
  await fs.rm(w.dir, { recursive: true, force: true });
});

async function setUp(tag: string): Promise<World> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kmg-'));
  const golden = path.join(dir, 'golden.raw');
  await createGoldenImage(golden, 64 * 1024 * 1024, `KS-GOLDEN ${tag}`);
  const src = new QsdBackend({ stateDir: path.join(dir, 'a'), vhostDir: path.join(dir, 'a', 'v'), managed: true, restartDelayMs: 50 });
  const dst = new QsdBackend({ stateDir: path.join(dir, 'b'), vhostDir: path.join(dir, 'b', 'v'), managed: true });
  await Promise.all([src.start(), dst.start()]);
  const images: ImageSpec[] = [{ name: 'img', source: { hostPath: { path: golden } }, format: 'raw' }];
  const agent = async (backend: QsdBackend, name: string): Promise<NodeAgent> => {
    const a = new NodeAgent({ backend, stateDir: path.join(dir, name, 'agent'), socket: OWNER, resyncMs: 0, node: `node-${name}` });
    await a.init();
    // Live recovery: a backend that comes back gets its controllers (and exports) again.
    a.start();
    return a;
  };
  const agents = { source: await agent(src, 'a'), target: await agent(dst, 'b') };
  // The source node's agent serves the VM's disk, cloned from the golden image.
  agents.source.setDesired(buildDesired({ vmis: [{ origin: 'vm1', vmi: VMI, slot: SRC_SLOT }], images }));
  const r = await agents.source.converge('vm1');
  expect(r.vmis[0]?.disks[0]?.phase).toBe('Ready');
  const disk = (await src.observe()).disks.find((d) => d.id === DISK_ID);
  const ctrl = (await src.observe()).controllers.find((c) => c.name === `${SRC_SLOT}/${DISK}`);
  const srcVm = new MigratableVm({ dir, name: 'src', ...guest, cmdline: guestCmdline({ seq: 0, tag }), vhostSocket: ctrl?.socketPath ?? '' });
  world = { dir, src, dst, agents, images, srcVm, journals: {}, overlay: disk?.ref ?? '' };
  await srcVm.start();
  return world;
}

/** What one node's agent holds for the VMI now, as the planner reads it. */
function here(agent: NodeAgent): CoordinatorInput['here'] {
  const exported = Object.fromEntries(Object.values(agent.exportsNow()).map((e) => [e.disk, e.ref]));
  const disks = Object.fromEntries(
    (agent.lastReport?.vmis.find((v) => v.vmi.uid === UID)?.disks ?? []).map((d) => [d.name, { phase: d.phase, ...(d.message ? { message: d.message } : {}), ...(d.migration ? { migration: d.migration } : {}) }]),
  );
  return { exported, disks };
}

/**
 * One agent pass on one node: plan from the migration state, record, hand the intent to the
 * node's agent as its node view, reconcile; again until the planner has nothing more to
 * record (it plans from what the agent did). Returns the last plan with every step recorded.
 */
async function agentPass(w: World, role: 'source' | 'target', state: MigrationState, opts: { clone?: boolean } = {}): Promise<MigrationPlan> {
  const node = role === 'source' ? 'node-a' : 'node-b';
  const agent = w.agents[role];
  const steps: MigrationPlan['actions'] = [];
  let plan: MigrationPlan | undefined;
  for (let pass = 0; pass < 4; pass++) {
    plan = planMigration({
      node,
      state,
      disks: [{ name: DISK, diskId: DISK_ID, source: { kind: 'local' }, readonly: false }],
      slot: role === 'source' ? SRC_SLOT : DST_SLOT,
      backendCanMigrate: true,
      // The data moves only when asked: the first tests keep today's "served from the source".
      backendCanClone: opts.clone === true,
      targetHydrated: new Set(w.journals.target?.hydrated ?? []),
      exportAddress: { kind: 'unix', path: path.join(w.dir, 'nbd.sock') },
      sourceExports: w.journals.source?.exports,
      here: here(agent),
      journal: w.journals[role],
    });
    if (plan.journal) w.journals[role] = applySteps(plan.journal, plan.actions);
    steps.push(...plan.actions);
    const { intent } = plan;
    // The node view: the source serves its VMI until it is handed over; the target serves it from the source's export.
    const vmis: ViewVmi[] =
      role === 'source'
        ? intent.handedOver
          ? []
          : [{ origin: 'vm1', vmi: VMI, slot: SRC_SLOT }]
        : intent.serve
          ? [{ origin: 'vm1', vmi: VMI, slot: DST_SLOT, attached: intent.serve.attached }]
          : [];
    const exports = intent.exports.map((e) => ({ id: e.diskId, vmi: { namespace: 'default', name: 'vm1', uid: UID }, disk: e.disk, address: e.address, why: 'live migration' }));
    agent.setDesired(buildDesired({ vmis, images: w.images, exports }));
    await agent.converge(`migration-${role}`);
    if (pass > 0 && plan.actions.length === 0) break;
  }
  return { ...(plan as MigrationPlan), actions: steps };
}

/** The VMI's disk as the agent reports it. */
function diskStatus(agent: NodeAgent): DiskStatus | undefined {
  return agent.lastReport?.vmis.find((v) => v.vmi.uid === UID)?.disks.find((d) => d.name === DISK);
}

/** Bytes of guest data the qcow2 file itself holds (not its backing). */
async function allocatedInTop(file: string): Promise<number> {
  const { stdout } = await execFileP('qemu-img', ['map', '-U', '--output=json', file]);
  const map = JSON.parse(stdout) as Array<{ length: number; depth: number; data: boolean }>;
  return map.filter((e) => e.depth === 0 && e.data).reduce((n, e) => n + e.length, 0);
}

/** The backing file a qcow2 names, if any. */
async function backingOf(file: string): Promise<string | undefined> {
  const { stdout } = await execFileP('qemu-img', ['info', '-U', '--output=json', file]);
  return (JSON.parse(stdout) as { 'backing-filename'?: string })['backing-filename'];
}

const running: MigrationState = { migrationUid: 'mig-1', sourceNode: 'node-a', targetNode: 'node-b', targetPod: 'virt-launcher-b', mode: 'PreCopy' };

async function prepareTarget(w: World, tag: string, opts: { clone?: boolean } = {}): Promise<MigratableVm> {
  await agentPass(w, 'source', running);
  const t = await agentPass(w, 'target', running, opts);
  expect(t.actions.map((a) => a.type)).toContain('reportTargetReady');
  const ctrl = (await w.dst.observe()).controllers.find((c) => c.name === `${DST_SLOT}/${DISK}`);
  expect(ctrl).toBeDefined();
  const dstVm = new MigratableVm({
    dir: w.dir,
    name: 'dst',
    ...guest,
    cmdline: guestCmdline({ seq: 0, tag }),
    vhostSocket: ctrl?.socketPath ?? '',
    incoming: `unix:${path.join(w.dir, 'mig.sock')}`,
  });
  w.dstVm = dstVm;
  await dstVm.start();
  return dstVm;
}

describe.skipIf(missing)('live migration with real QEMU over qemu-storage-daemon + NBD', () => {
  it('the guest keeps writing on the target: no gap, data before and after reads back', async () => {
    const w = await setUp('mig1');
    const con = w.srcVm.console;
    expect((await con.waitFor('GOLDEN', 60_000)).rest).toBe('KS-GOLDEN mig1');
    await con.waitFor('MARKER', 30_000, /^OK mig1$/);
    await con.waitFor('SEQ', 30_000, (r) => Number(r) >= 5);

    const dstVm = await prepareTarget(w, 'mig1');
    const result = await migrate(w.srcVm, `unix:${path.join(w.dir, 'mig.sock')}`, 90_000);
    expect(result.status, result.error).toBe('completed');
    const lastOnSource = Math.max(...con.events.filter((e) => e.word === 'SEQ').map((e) => Number(e.rest)));

    // The guest goes on where it was: the next record after the last one the source printed.
    await dstVm.console.waitFor('SEQ', 30_000, (r) => Number(r) >= lastOnSource + 3);
    expect(await dstVm.status()).toBe('running');

    // Success: the source VM goes, then its agent deletes the controller and keeps the export.
    await w.srcVm.kill();
    const done: MigrationState = { ...running, completed: true, endTimestamp: new Date().toISOString() };
    await agentPass(w, 'source', done);
    await agentPass(w, 'target', done);
    expect(w.journals.source?.phase).toBe('handedOver');
    expect(w.journals.source?.dataNode).toEqual({ [DISK]: 'node-a' });
    expect(w.journals.target?.phase).toBe('serving');
    const exports = (await w.src.qmpExecute<Array<{ id: string; type: string }>>('query-block-exports')).map((e) => `${e.type}:${e.id}`);
    expect(exports).toEqual([`nbd:${nbdExportId(DISK_ID)}`]);

    // The target keeps running on the source's data; then the guest verifies every record.
    await dstVm.console.waitFor('SEQ', 30_000, (r) => Number(r) >= lastOnSource + 6);
    const stopped = Number((await dstVm.console.stopWriting()).rest);
    expect(stopped).toBeGreaterThan(lastOnSource + 6);
    expect((await dstVm.console.waitFor('VERIFY', 60_000)).rest).toBe(`OK ${stopped}`);
    await dstVm.exited(30_000);

    // Read back through the source's overlay: the marker and the last record are there.
    const marker = await readDiskBytes(w.overlay, 1024 * 1024, 64, w.dir);
    expect(marker.toString().replace(/\0+$/, '')).toBe('KS-GUEST mig1\n');
    const last = await readDiskBytes(w.overlay, 2 * 1024 * 1024 + 4096 * (stopped - 1), 64, w.dir);
    expect(last.toString().replace(/\0+$/, '')).toBe(`KSSEQ ${stopped - 1}\n`);
  }, 180_000);

  it('drain: the target hydrates after switchover, the source lets go of everything, and with its backend and agent stopped the guest keeps every write', async () => {
    const w = await setUp('mig3');
    const con = w.srcVm.console;
    expect((await con.waitFor('GOLDEN', 60_000)).rest).toBe('KS-GOLDEN mig3');
    await con.waitFor('MARKER', 30_000, /^OK mig3$/);
    await con.waitFor('SEQ', 30_000, (r) => Number(r) >= 5);

    // The target serves a lazy clone of the source's export from the first moment.
    const dstVm = await prepareTarget(w, 'mig3', { clone: true });
    const clone = (await w.dst.observe()).disks.find((d) => d.id === DISK_ID);
    expect(clone?.owned).toBe(true);
    expect(diskStatus(w.agents.target)?.migration).toEqual({ phase: 'Cloned', from: 'node-a', percent: 0 });
    // Before switchover the clone holds no guest data: every read falls through to the source.
    expect(await allocatedInTop(clone?.ref ?? '')).toBe(0);

    const result = await migrate(w.srcVm, `unix:${path.join(w.dir, 'mig.sock')}`, 90_000);
    expect(result.status, result.error).toBe('completed');
    const lastOnSource = Math.max(...con.events.filter((e) => e.word === 'SEQ').map((e) => Number(e.rest)));
    await dstVm.console.waitFor('SEQ', 90_000, (r) => Number(r) >= lastOnSource + 2);
    await w.srcVm.kill();

    // KubeVirt reports success: the source hands over (keeps its export), the target hydrates.
    const done: MigrationState = { ...running, completed: true, endTimestamp: new Date().toISOString() };
    await agentPass(w, 'source', done);
    for (let i = 0; i < 120 && !(w.journals.target?.hydrated ?? []).includes(DISK); i++) {
      await agentPass(w, 'target', done, { clone: true });
      if (!(w.journals.target?.hydrated ?? []).includes(DISK)) await new Promise((r) => setTimeout(r, 250));
    }
    expect(w.journals.target?.hydrated).toEqual([DISK]);
    expect(w.journals.target?.dataNode).toEqual({ [DISK]: 'node-b' });
    await w.agents.target.converge('hydrated');
    expect(diskStatus(w.agents.target)).toMatchObject({ phase: 'Ready', dataNode: 'node-b' });

    // The source sees the target's word: its export, disk and slot go.
    await agentPass(w, 'source', done);
    expect(w.journals.source?.exports).toEqual({});
    expect(w.journals.source?.dataNode).toEqual({ [DISK]: 'node-b' });
    const left = await w.src.observe();
    expect(left.disks.filter((d) => d.id === DISK_ID)).toEqual([]);
    expect(left.controllers).toEqual([]);
    expect(await w.src.qmpExecute('query-block-exports')).toEqual([]);
    expect(w.agents.source.ownedNow()).toEqual({});

    // Drain: the source node's agent and backend stop entirely, its state is wiped.
    await w.agents.source.stop();
    await w.src.close();
    await fs.rm(path.join(w.dir, 'a'), { recursive: true, force: true });

    // The guest goes on writing, then verifies every record it ever wrote.
    await dstVm.console.waitFor('SEQ', 90_000, (r) => Number(r) >= lastOnSource + 8);
    const stopped = Number((await dstVm.console.stopWriting()).rest);
    expect((await dstVm.console.waitFor('VERIFY', 60_000)).rest).toBe(`OK ${stopped}`);
    await dstVm.exited(30_000);

    // The target's disk stands alone and holds it all: the golden's bytes, the marker, the last record.
    const overlay = clone?.ref ?? '';
    expect(await backingOf(overlay)).toBeUndefined();
    expect((await readDiskBytes(overlay, 0, 64, w.dir)).toString().replace(/\0+$/, '')).toBe('KS-GOLDEN mig3\n');
    expect((await readDiskBytes(overlay, 1024 * 1024, 64, w.dir)).toString().replace(/\0+$/, '')).toBe('KS-GUEST mig3\n');
    const last = await readDiskBytes(overlay, 2 * 1024 * 1024 + 4096 * (stopped - 1), 64, w.dir);
    expect(last.toString().replace(/\0+$/, '')).toBe(`KSSEQ ${stopped - 1}\n`);
  }, 240_000);

  it('A -> B -> A: migrated back right after the data moved, the guest keeps every write and B is left with nothing', async () => {
    const w = await setUp('mig4');
    const con = w.srcVm.console;
    await con.waitFor('MARKER', 60_000, /^OK mig4$/);
    await con.waitFor('SEQ', 30_000, (r) => Number(r) >= 3);
    const nodes = { 'node-a': { agent: w.agents.source, backend: w.src }, 'node-b': { agent: w.agents.target, backend: w.dst } };
    const journals = new Map<string, MigrationJournal>();
    const hydratedOn = new Map<string, string[]>();
    /** One node's planner + agent, as cluster mode runs them, for the migration `state` with the VMI at `slot` there. */
    const pass = async (node: keyof typeof nodes, state: MigrationState, slot: string): Promise<MigrationPlan> => {
      const { agent } = nodes[node];
      let plan: MigrationPlan | undefined;
      for (let i = 0; i < 4; i++) {
        const role = state.sourceNode === node ? 'source' : 'target';
        const other = role === 'source' ? state.targetNode : state.sourceNode;
        const mine = journals.get(node);
        plan = planMigration({
          node,
          state,
          disks: [{ name: DISK, diskId: DISK_ID, source: { kind: 'local' }, readonly: false }],
          slot,
          backendCanMigrate: true,
          backendCanClone: true,
          targetHydrated: new Set(hydratedOn.get(`${other}:${migrationKey(state)}`) ?? []),
          exportAddress: { kind: 'unix', path: path.join(w.dir, `${node}-nbd.sock`) },
          sourceExports: journals.get(state.sourceNode ?? '')?.migrationUid === migrationKey(state) ? journals.get(state.sourceNode ?? '')?.exports : undefined,
          here: { ...here(agent), earlierCopies: Object.entries(agent.ownedNow()).filter(([id, o]) => id === DISK_ID && o.migration !== migrationKey(state)).map(() => DISK) },
          journal: mine,
        });
        const j = plan.journal && applySteps(plan.journal, plan.actions);
        if (j) {
          journals.set(node, j);
          if (j.role === 'target') hydratedOn.set(`${node}:${j.migrationUid}`, j.hydrated);
        }
        const { intent } = plan;
        const vmis: ViewVmi[] =
          role === 'source' ? (intent.handedOver ? [] : [{ origin: 'vm1', vmi: VMI, slot }]) : intent.serve ? [{ origin: 'vm1', vmi: VMI, slot, attached: intent.serve.attached }] : [];
        const exports = intent.exports.map((e) => ({ id: e.diskId, vmi: { namespace: 'default', name: 'vm1', uid: UID }, disk: e.disk, address: e.address, why: 'live migration' }));
        agent.setDesired(buildDesired({ vmis, images: w.images, exports }));
        await agent.converge(`migration-${role}`);
        if (i > 0 && plan.actions.length === 0) break;
      }
      return plan as MigrationPlan;
    };
    /** Source and target prepare, QEMU migrates, KubeVirt reports success, the target hydrates and the source lets go. */
    const move = async (from: keyof typeof nodes, to: keyof typeof nodes, uid: string, fromSlot: string, toSlot: string, vm: MigratableVm): Promise<MigratableVm> => {
      const state: MigrationState = { migrationUid: uid, sourceNode: from, targetNode: to, mode: 'PreCopy' };
      await pass(from, state, fromSlot);
      const t = await pass(to, state, toSlot);
      expect(t.targetReady, t.reason).toBe(true);
      const ctrl = (await nodes[to].backend.observe()).controllers.find((c) => c.name === `${toSlot}/${DISK}`);
      const sock = path.join(w.dir, `${uid}.sock`);
      const next = new MigratableVm({ dir: w.dir, name: uid, ...guest, cmdline: guestCmdline({ seq: 0, tag: 'mig4' }), vhostSocket: ctrl?.socketPath ?? '', incoming: `unix:${sock}` });
      await next.start();
      const res = await migrate(vm, `unix:${sock}`, 90_000);
      expect(res.status, res.error).toBe('completed');
      await vm.kill();
      const done = { ...state, completed: true };
      await pass(from, done, fromSlot);
      for (let i = 0; i < 120 && !(journals.get(to)?.hydrated ?? []).includes(DISK); i++) {
        await pass(to, done, toSlot);
        if (!(journals.get(to)?.hydrated ?? []).includes(DISK)) await new Promise((r) => setTimeout(r, 250));
      }
      expect(journals.get(to)?.hydrated).toEqual([DISK]);
      await pass(from, done, fromSlot);
      const left = await nodes[from].backend.observe();
      expect([left.disks.filter((d) => d.id === DISK_ID), left.controllers]).toEqual([[], []]);
      expect(await nodes[from].backend.qmpExecute('query-block-exports')).toEqual([]);
      return next;
    };

    const onB = await move('node-a', 'node-b', 'mig-ab', SRC_SLOT, DST_SLOT, w.srcVm);
    w.dstVm = onB;
    const seqOnB = Math.max(...onB.console.events.filter((e) => e.word === 'SEQ').map((e) => Number(e.rest)), 0);
    await onB.console.waitFor('SEQ', 90_000, (r) => Number(r) >= seqOnB + 2);
    const backOnA = await move('node-b', 'node-a', 'mig-ba', DST_SLOT, 'slot-03', onB);
    w.dstVm = backOnA;

    // B is drained: its agent and backend stop, its state goes.
    await w.agents.target.stop();
    await w.dst.close();
    await fs.rm(path.join(w.dir, 'b'), { recursive: true, force: true });
    const seqOnA = Math.max(...backOnA.console.events.filter((e) => e.word === 'SEQ').map((e) => Number(e.rest)), 0);
    await backOnA.console.waitFor('SEQ', 90_000, (r) => Number(r) >= seqOnA + 3);
    const stopped = Number((await backOnA.console.stopWriting()).rest);
    expect((await backOnA.console.waitFor('VERIFY', 60_000)).rest).toBe(`OK ${stopped}`);
    await backOnA.exited(30_000);
    const disk = (await w.src.observe()).disks.find((d) => d.id === DISK_ID);
    expect(await backingOf(disk?.ref ?? '')).toBeUndefined();
    expect((await readDiskBytes(disk?.ref ?? '', 0, 64, w.dir)).toString().replace(/\0+$/, '')).toBe('KS-GOLDEN mig4\n');
    const last = await readDiskBytes(disk?.ref ?? '', 2 * 1024 * 1024 + 4096 * (stopped - 1), 64, w.dir);
    expect(last.toString().replace(/\0+$/, '')).toBe(`KSSEQ ${stopped - 1}\n`);
  }, 300_000);

  it('a source backend restart during migration fails it cleanly: the source VM runs on, data intact', async () => {
    const w = await setUp('mig2');
    const con = w.srcVm.console;
    await con.waitFor('MARKER', 60_000, /^OK mig2$/);
    await con.waitFor('SEQ', 30_000, (r) => Number(r) >= 3);
    const dstVm = await prepareTarget(w, 'mig2');
    // Slow enough that the restart lands mid-migration.
    await w.srcVm.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 2 * 1024 * 1024 });
    const migrating = migrate(w.srcVm, `unix:${path.join(w.dir, 'mig.sock')}`, 120_000);
    await new Promise((r) => setTimeout(r, 1_000));

    // spdk_tgt/QSD crashes on the source node; the backend restarts it and the agent's live
    // recovery recreates the controller (and the export) at once.
    const reconnected = new Promise<void>((r) => w.src.once('connected', () => r()));
    const pid = Number((await fs.readFile(path.join(w.dir, 'a', 'qsd.pid'), 'utf8')).trim());
    process.kill(pid, 'SIGKILL');
    await reconnected;
    await w.agents.source.converge('backend-connected');

    // A backend restart loses the dirty-page log of the vhost device, so the source's agent
    // fails the migration (KubeVirt: abort the migration object; here: migrate_cancel).
    await w.srcVm.qmp.execute('migrate_cancel');
    const result = await migrating;
    expect(result.status).toBe('cancelled');
    expect(await w.srcVm.status()).toBe('running');

    // KubeVirt reports the failure; both agents roll back, the source VM is left alone.
    const failed: MigrationState = { ...running, failed: true, endTimestamp: new Date().toISOString() };
    await agentPass(w, 'target', failed);
    await agentPass(w, 'source', failed);
    await dstVm.kill();
    expect(w.journals.target?.phase).toBe('rolledBack');
    expect(w.journals.target?.controllers).toEqual({});
    expect(w.journals.source?.exports).toEqual({});
    expect((await w.dst.observe()).controllers).toEqual([]);
    const exports = (await w.src.qmpExecute<Array<{ id: string; type: string }>>('query-block-exports')).map((e) => e.type);
    expect(exports).toEqual(['vhost-user-blk']);

    // The guest on the source never stopped and every record it wrote reads back.
    const before = Math.max(...con.events.filter((e) => e.word === 'SEQ').map((e) => Number(e.rest)));
    await con.waitFor('SEQ', 60_000, (r) => Number(r) >= before + 3);
    const stopped = Number((await con.stopWriting()).rest);
    expect((await con.waitFor('VERIFY', 60_000)).rest).toBe(`OK ${stopped}`);
  }, 180_000);
});
