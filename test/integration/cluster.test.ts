import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SlotStatusSchema, VmiStatusSchema } from '../../src/api/status.js';
import { STATUS_ANNOTATION } from '../../src/api/volumes.js';
import { createLogger } from '../../src/log.js';
import { CIMGS, PODS, VMIS, eventually as until, schedule as scheduleVmi, startClusterRig, stopClusterRig, vmiObject, type ClusterRig } from '../helpers/cluster-rig.js';

/**
 * Cluster mode end to end, in one process: the agent's informers against a fake API server,
 * PodResources against a fake kubelet gRPC server, the SPDK backend against the simulator.
 */

const NODE = 'node-a';
const NICS = 'kubevirt-spdk.io/v1alpha1/nodeimagecaches';
const EVENTS = '/v1/events';

type Rig = ClusterRig;
let rig: Rig | undefined;
/** Backend deletions the agent asked for. */
let deletions: string[] = [];

const ROOT = '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 1Gi}\n';

beforeEach(async () => {
  deletions = [];
  rig = await startClusterRig({
    node: NODE,
    lvstoreMiB: 256,
    ...(process.env.CLUSTER_TEST_DEBUG ? { logger: createLogger('cluster-test', 'debug') } : {}),
    instrument: (backend) => {
      for (const m of ['deleteDisk', 'deleteController', 'deleteImage'] as const) {
        const orig = backend[m].bind(backend);
        backend[m] = (name: string) => {
          deletions.push(`${m}:${name}`);
          return orig(name);
        };
      }
    },
  });
});

afterEach(async () => {
  const r = rig;
  rig = undefined;
  if (r) await stopClusterRig(r);
});

const schedule = (r: Rig, name: string, uid: string, slot: string, volumes = ROOT): void => scheduleVmi(r, name, uid, slot, volumes);

const vmiStatus = (r: Rig, name: string) => {
  const a = (r.api.get(VMIS, name, 'default')?.metadata?.annotations as Record<string, string> | undefined)?.[STATUS_ANNOTATION];
  return a === undefined ? undefined : VmiStatusSchema.parse(JSON.parse(a));
};
const diskReady = (r: Rig, name: string, disk = 'root') => vmiStatus(r, name)?.disks.find((d) => d.name === disk)?.phase === 'Ready' || undefined;

describe('agent cluster mode', () => {
  it('serves a scheduled VMI: controller at <vhost>/<slot>/<disk>, slot file ready, status merge-patched, NodeImageCache and readyNodes written', async () => {
    const r = rig!;
    schedule(r, 'vm1', 'uid-1', 'slot-03');
    await r.cluster.start();
    await until('vm1 Ready in its status annotation', () => diskReady(r, 'vm1'));

    const sock = path.join(r.dir, 'vh', 'slot-03', 'root');
    expect((await stat(sock)).isSocket()).toBe(true);
    const slot = SlotStatusSchema.parse(JSON.parse(await readFile(path.join(r.dir, 'st', 'slots', 'slot-03.json'), 'utf8')));
    expect(slot).toMatchObject({ slot: 'slot-03', ready: true, vmi: { namespace: 'default', name: 'vm1', uid: 'uid-1' } });

    const status = vmiStatus(r, 'vm1');
    expect(status).toMatchObject({ node: NODE, slot: 'slot-03', disks: [{ name: 'root', phase: 'Ready', socket: sock }] });
    const vmiPatches = r.api.patches.filter((p) => p.resource === VMIS);
    expect(vmiPatches.length).toBeGreaterThan(0);
    for (const p of vmiPatches) {
      expect(p.contentType).toMatch(/^application\/merge-patch\+json/);
      expect(Object.keys((p.body as { metadata: { annotations: object } }).metadata.annotations)).toEqual([STATUS_ANNOTATION]);
    }
    // The user's annotation is untouched by the merge patch.
    expect((r.api.get(VMIS, 'vm1', 'default')?.metadata?.annotations as Record<string, string>)['kubevirt-spdk.io/volumes']).toBe(ROOT);

    const nic = await until('NodeImageCache lists base ready', () => {
      const o = r.api.get(NICS, NODE) as { status?: { images?: Array<{ name: string; phase: string; clones?: number }> } } | undefined;
      return o?.status?.images?.some((i) => i.name === 'base' && i.phase === 'ready' && i.clones === 1) ? o : undefined;
    });
    expect(nic.status).toMatchObject({ backend: 'spdk', summary: 'base(1 clone)', usedBytes: 8 * 2 ** 20 });
    await until('CachedImage readyNodes = 1', () => (r.api.get(CIMGS, 'base')?.status as { readyNodes?: number } | undefined)?.readyNodes === 1 || undefined);
    expect(r.api.patches.filter((p) => p.subresource === 'status').every((p) => p.contentType.startsWith('application/merge-patch+json'))).toBe(true);
    expect(r.cluster.ready()).toBe(true);

    // Nothing changed: no further status patch for the VMI after more reconciles.
    const n = r.api.patches.filter((p) => p.resource === VMIS).length;
    await r.cluster.agent.reconcile('test');
    await r.cluster.flushWrites();
    expect(r.api.patches.filter((p) => p.resource === VMIS).length).toBe(n);
  });

  it('reports a failing disk with one Warning Event on the VMI, and bad volumes with another', async () => {
    const r = rig!;
    schedule(r, 'vm2', 'uid-2', 'slot-04', `${ROOT}- name: data\n  spdkVhostBlkDisk: {image: missing, capacity: 1Gi}\n`);
    r.api.put(VMIS, vmiObject('vm3', 'uid-3', '- name: x\n  spdkVhostBlkDisk: {capacity: 1Gi, unknownField: 1}\n', NODE));
    await r.cluster.start();
    const failed = await until('SpdkDiskFailed event', () => r.api.list(EVENTS).find((e) => e.reason === 'SpdkDiskFailed'));
    expect(failed).toMatchObject({
      type: 'Warning',
      involvedObject: { kind: 'VirtualMachineInstance', name: 'vm2', namespace: 'default', uid: 'uid-2' },
      message: expect.stringMatching(/disk data: .*CachedImage "missing" does not exist/),
    });
    const invalid = await until('SpdkVolumesInvalid event', () => r.api.list(EVENTS).find((e) => e.reason === 'SpdkVolumesInvalid'));
    expect(invalid).toMatchObject({ involvedObject: { name: 'vm3' }, message: expect.stringContaining('unknownField') });
    await until('vm2 root Ready', () => diskReady(r, 'vm2'));
    expect(vmiStatus(r, 'vm2')?.disks.find((d) => d.name === 'data')).toMatchObject({ phase: 'Failed' });

    // The same failure over more rounds is not reported again.
    for (let i = 0; i < 3; i++) await r.cluster.agent.reconcile('test');
    await r.cluster.flushWrites();
    expect(r.api.list(EVENTS).filter((e) => e.reason === 'SpdkDiskFailed')).toHaveLength(1);
  });

  it('relists after a watch 410 without deleting anything, and picks up what changed meanwhile', async () => {
    const r = rig!;
    schedule(r, 'vm1', 'uid-1', 'slot-01');
    await r.cluster.start();
    await until('vm1 Ready', () => diskReady(r, 'vm1'));
    const listsBefore = r.api.requests.filter((q) => q.startsWith('GET /apis/kubevirt.io/v1/virtualmachineinstances?') && !q.includes('watch=true')).length;

    r.api.expireWatches();
    schedule(r, 'vm2', 'uid-2', 'slot-02');
    await until('vm2 Ready', () => diskReady(r, 'vm2'));

    const listsAfter = r.api.requests.filter((q) => q.startsWith('GET /apis/kubevirt.io/v1/virtualmachineinstances?') && !q.includes('watch=true')).length;
    expect(listsAfter).toBeGreaterThan(listsBefore);
    expect(deletions).toEqual([]);
    expect((await stat(path.join(r.dir, 'vh', 'slot-01', 'root'))).isSocket()).toBe(true);
  });

  it('keeps serving while the API server is away, says so on /readyz, recovers when it returns, and cleans up a deleted VMI', async () => {
    const r = rig!;
    schedule(r, 'vm1', 'uid-1', 'slot-01');
    await r.cluster.start();
    await until('vm1 Ready', () => diskReady(r, 'vm1'));

    await r.api.goAway();
    const why = await until('not ready', () => {
      const v = r.cluster.ready();
      return v === true ? undefined : v;
    });
    expect(why).toMatch(/API server unreachable/);
    // Reconciles go on from the last known desired state: the controller stays.
    const rounds = await r.cluster.agent.reconcile('test');
    expect(rounds.vmis.map((v) => v.vmi.name)).toEqual(['vm1']);
    expect(deletions).toEqual([]);
    expect(r.sim.snapshot().controllers.map((c) => c.name)).toContain('slot-01/root');

    // Meanwhile the cluster moved on: a new VMI was scheduled here.
    schedule(r, 'vm2', 'uid-2', 'slot-02');
    await r.api.comeBack();
    await until('vm2 Ready after the API server returned', () => diskReady(r, 'vm2'), 15_000);
    await until('ready again', () => r.cluster.ready() === true || undefined);
    expect(deletions).toEqual([]);

    // VMI deleted: its controller and disk go, the other VMI's stay.
    r.api.remove(VMIS, 'vm1', 'default');
    r.api.remove(PODS, 'virt-launcher-vm1', 'default');
    r.slots.splice(0, 1);
    await until('vm1 controller deleted', () => !r.sim.snapshot().controllers.some((c) => c.name === 'slot-01/root') || undefined);
    await until('vm1 disk deleted', () => deletions.some((d) => d.startsWith('deleteDisk:')) || undefined);
    expect(deletions.every((d) => !d.includes('slot-02'))).toBe(true);
    expect(r.sim.snapshot().controllers.map((c) => c.name)).toEqual(['slot-02/root']);
    await until('slot-01 readiness file removed', () => stat(path.join(r.dir, 'st', 'slots', 'slot-01.json')).then(() => undefined, () => true));
  });

  it('does not act before every informer has listed once', async () => {
    const r = rig!;
    schedule(r, 'vm1', 'uid-1', 'slot-01');
    await r.api.goAway();
    await r.cluster.start();
    await new Promise((res) => setTimeout(res, 300));
    expect(r.cluster.ready()).toMatch(/waiting for the first list/);
    expect(r.cluster.agent.lastReport).toBeUndefined();
    await r.api.comeBack();
    await until('vm1 Ready once the API server answers', () => diskReady(r, 'vm1'));
  });
});
