import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { NodeAgent } from '../../../src/agent/agent.js';
import { buildDesired, type DesiredExport, type DesiredState } from '../../../src/agent/desired.js';
import type { RemoteDiskRef } from '../../../src/backend/remote.js';
import { BackendError, type ExportOptions, type ObservedDisk } from '../../../src/backend/types.js';
import { diskId } from '../../../src/contract/index.js';
import { FakeBackend } from '../../helpers/fake-backend.js';
import { desiredOf, image, testSocket, vmi } from './fixtures.js';

/**
 * The one actuator does migrations too: the agent exports, attaches, detaches and unexports
 * from its desired state, journaled, against a fake backend that implements the optional
 * migration methods of the port.
 */
class RemoteFake extends FakeBackend {
  readonly exported = new Map<string, RemoteDiskRef>();
  readonly attached = new Set<string>();
  unreachable = false;

  async exportDisk(id: string, opts: ExportOptions): Promise<RemoteDiskRef> {
    this.calls.push(`exportDisk ${id}`);
    const d = this.disks.get(id);
    if (!d) throw new BackendError(`export of disk ${id}: no such disk`, 'notFound');
    if (opts.listenAddress.kind !== 'tcp') throw new BackendError('tcp only', 'invalid');
    const ref: RemoteDiskRef = { transport: 'nvmf-tcp', host: opts.listenAddress.host, port: opts.listenAddress.port, adrfam: 'ipv4', subnqn: `nqn.2024-01.io.kubevirt-spdk:${id}`, sizeBytes: d.sizeBytes };
    this.exported.set(id, ref);
    return ref;
  }

  async unexportDisk(id: string): Promise<void> {
    this.calls.push(`unexportDisk ${id}`);
    this.exported.delete(id);
  }

  async attachRemoteDisk(ref: RemoteDiskRef, localId: string): Promise<ObservedDisk> {
    this.calls.push(`attachRemoteDisk ${localId}`);
    if (this.unreachable) throw new BackendError(`disk ${localId}: connect refused (export unreachable)`, 'transport');
    this.attached.add(localId);
    this.bdevs.add(`mig-${localId}n1`);
    return { id: localId, ref: `mig-${localId}n1`, sizeBytes: ref.sizeBytes, dependents: 0, owned: false };
  }

  async detachRemoteDisk(localId: string): Promise<void> {
    this.calls.push(`detachRemoteDisk ${localId}`);
    const user = [...this.controllers.values()].find((c) => c.diskRef === `mig-${localId}n1`);
    if (user) throw new BackendError(`disk ${localId}: still served by ${user.name}`, 'busy');
    this.attached.delete(localId);
    this.bdevs.delete(`mig-${localId}n1`);
  }
}

const ID = diskId('uid-a', 'root');
const REF: RemoteDiskRef = { transport: 'nvmf-tcp', host: '10.0.0.1', port: 4420, adrfam: 'ipv4', subnqn: `nqn.2024-01.io.kubevirt-spdk:${ID}`, sizeBytes: 2 ** 30 };
const A = vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }]);
const exportOf = (): DesiredExport => ({ id: ID, vmi: { namespace: 'default', name: 'a', uid: 'uid-a' }, disk: 'root', address: { kind: 'tcp', host: '10.0.0.1', port: 4420 }, why: 'live migration m1' });
/** VMI a served here at slot-05 from node-a's export (a migration target). */
const servedFromA = (): DesiredState =>
  buildDesired({ vmis: [{ origin: 'a', vmi: vmi('a', undefined, [{ name: 'root', image: 'fedora' }]), slot: 'slot-05', attached: { root: { ref: REF, node: 'node-a' } } }], images: [image('fedora')] });

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true, maxRetries: 5 });
  dir = undefined;
});

async function agentOn(backend?: RemoteFake): Promise<{ backend: RemoteFake; agent: NodeAgent }> {
  dir ??= await mkdtemp(path.join(os.tmpdir(), 'ag-remote-'));
  const b = backend ?? new RemoteFake(path.join(dir, 'vhost'));
  const agent = new NodeAgent({ backend: b, stateDir: path.join(dir, 'state'), socket: testSocket, orphanGraceMs: 0, resyncMs: 0, node: 'node-b', retry: { attempts: 2, baseMs: 1, maxMs: 2 } });
  await agent.init();
  return { backend: b, agent };
}

describe('NodeAgent: exports and attached disks', () => {
  it('a migration target serves the attached disk (data on the source node), then detaches it when it is no longer served here', async () => {
    const { backend, agent } = await agentOn();
    agent.setDesired(servedFromA());
    const r = await agent.converge('target');
    expect(r.converged).toBe(true);
    expect(r.vmis[0]?.disks[0]).toMatchObject({ name: 'root', phase: 'Ready', dataNode: 'node-a' });
    expect(backend.controllers.get('slot-05/root')?.diskRef).toBe(`mig-${ID}n1`);
    // Nothing cloned, nothing imported: the data is node-a's.
    expect(backend.disks.size).toBe(0);
    expect(backend.images.size).toBe(0);
    // A restarted agent finds it served (journal) without attaching again.
    const second = await agentOn(backend);
    second.agent.setDesired(servedFromA());
    backend.calls.length = 0;
    expect((await second.agent.converge('restart')).converged).toBe(true);
    expect(backend.calls.filter((c) => !c.startsWith('observe'))).toEqual([]);

    second.agent.setDesired(desiredOf([], [image('fedora')]));
    await second.agent.converge('rolled back');
    expect(backend.controllers.size).toBe(0);
    expect(backend.attached.size).toBe(0);
    expect(backend.calls.filter((c) => /deleteDisk|detach/.test(c))).toEqual([`detachRemoteDisk ${ID}`]);
  });

  it('an export that cannot be reached fails the disk, saying so', async () => {
    const { backend, agent } = await agentOn();
    backend.unreachable = true;
    agent.setDesired(servedFromA());
    const r = await agent.converge('target');
    expect(r.vmis[0]?.disks[0]?.phase).toBe('Failed');
    expect(r.vmis[0]?.disks[0]?.message).toMatch(/export on node node-a unreachable: .*connect refused/);
    expect(backend.controllers.size).toBe(0);
  });

  it('a desired export is made once and keeps its disk after the VMI left; then unexported and the disk collected', async () => {
    const { backend, agent } = await agentOn();
    agent.setDesired({ ...desiredOf([A], [image('fedora')]), exports: [exportOf()] });
    await agent.converge('source');
    expect(backend.exported.get(ID)).toMatchObject({ host: '10.0.0.1', port: 4420 });
    expect(agent.exportsNow()[ID]?.ref).toEqual(backend.exported.get(ID));
    // Handed over: the VMI leaves this node, the export stays and so does the disk.
    agent.setDesired({ ...desiredOf([], [image('fedora')]), exports: [exportOf()] });
    backend.calls.length = 0;
    await agent.converge('handed over');
    expect(backend.controllers.size).toBe(0);
    expect(backend.disks.has(ID)).toBe(true);
    expect(backend.calls.filter((c) => c.startsWith('exportDisk'))).toEqual([]);
    // The VMI is gone: unexported, then deleted.
    agent.setDesired(desiredOf([], [image('fedora')]));
    await agent.converge('vmi gone');
    expect(backend.exported.size).toBe(0);
    expect(backend.disks.has(ID)).toBe(false);
    expect(agent.exportsNow()).toEqual({});
  });

  it('after the backend comes back the exports are made again', async () => {
    const { backend, agent } = await agentOn();
    agent.setDesired({ ...desiredOf([A], [image('fedora')]), exports: [exportOf()] });
    await agent.converge('source');
    agent.start();
    backend.exported.clear(); // a new process: its exports are gone
    const recovered = new Promise((r) => agent.once('recovery', r));
    await backend.restart();
    await recovered;
    await agent.stop();
    expect(backend.exported.has(ID)).toBe(true);
  });
});

describe('NodeAgent: a failing export', () => {
  it('is tried once per round and reported, not retried pass after pass', async () => {
    const { backend, agent } = await agentOn();
    agent.setDesired(desiredOf([A], [image('fedora')]));
    await agent.converge('source');
    // The address cannot be used by this backend: the export fails.
    agent.setDesired({ ...desiredOf([A], [image('fedora')]), exports: [{ ...exportOf(), address: { kind: 'unix', path: '/nowhere' } }] });
    backend.calls.length = 0;
    await agent.reconcile('export');
    expect(backend.calls.filter((c) => c.startsWith('exportDisk'))).toHaveLength(1);
    expect(agent.lastNodeStatus?.blocked).toContainEqual({ object: 'disk', name: ID, reason: 'export (live migration m1) failed: invalid: tcp only' });
  });
});
