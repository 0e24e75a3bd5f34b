import { V1MicroTime } from '@kubernetes/client-node';
import { afterEach, describe, expect, it } from 'vitest';
import { KubeApi, isConflict } from '../../../src/kube/api.js';
import { FakeApiServer } from '../../helpers/fake-apiserver.js';

/** KubeApi's reads and deletes against the fake API server: absent objects are answers, not errors. */

const VMIS = 'kubevirt.io/v1/virtualmachineinstances';
const VMIMS = 'kubevirt.io/v1/virtualmachineinstancemigrations';
const LEASES = 'coordination.k8s.io/v1/leases';

let server: FakeApiServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function start(): Promise<{ s: FakeApiServer; api: KubeApi }> {
  server = await FakeApiServer.start();
  return { s: server, api: new KubeApi(server.kubeConfig()) };
}

describe('KubeApi', () => {
  it('getVmi: the object, or undefined when it does not exist', async () => {
    const { s, api } = await start();
    s.put(VMIS, { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', metadata: { name: 'vm1', namespace: 'ns1', uid: 'u1' } });
    expect((await api.getVmi('ns1', 'vm1'))?.metadata).toMatchObject({ name: 'vm1', uid: 'u1' });
    expect(await api.getVmi('ns1', 'nope')).toBeUndefined();
    expect(await api.getVmi('other', 'vm1')).toBeUndefined();
  });

  it('listVmiMigrations lists one namespace; deleteVmiMigration deletes, and a migration already gone is not an error', async () => {
    const { s, api } = await start();
    const vmim = (name: string, namespace: string) => ({ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstanceMigration', metadata: { name, namespace }, spec: { vmiName: 'vm1' }, status: { phase: 'Running' } });
    s.put(VMIMS, vmim('m1', 'ns1'));
    s.put(VMIMS, vmim('m2', 'ns2'));
    const list = await api.listVmiMigrations('ns1');
    expect(list.map((m) => [m.metadata?.name, m.spec?.vmiName, m.status?.phase])).toEqual([['m1', 'vm1', 'Running']]);
    await api.deleteVmiMigration('ns1', 'm1');
    expect(s.get(VMIMS, 'm1', 'ns1')).toBeUndefined();
    await expect(api.deleteVmiMigration('ns1', 'm1')).resolves.toBeUndefined();
    expect(s.get(VMIMS, 'm2', 'ns2')).toBeDefined();
  });

  it('Leases: get (undefined when absent), create, and replace as a compare-and-swap on resourceVersion', async () => {
    const { s, api } = await start();
    expect(await api.getLease('ns', 'l')).toBeUndefined();
    await api.createLease('ns', { metadata: { name: 'l', namespace: 'ns' }, spec: { holderIdentity: 'a', renewTime: new V1MicroTime(Date.UTC(2026, 0, 2, 3, 4, 5, 678)) } });
    expect(s.get(LEASES, 'l', 'ns')?.spec).toEqual({ holderIdentity: 'a', renewTime: '2026-01-02T03:04:05.678000Z' });
    await expect(api.createLease('ns', { metadata: { name: 'l', namespace: 'ns' }, spec: {} })).rejects.toSatisfy(isConflict);
    const read = (await api.getLease('ns', 'l'))!;
    await api.replaceLease('ns', 'l', { ...read, spec: { holderIdentity: 'b' } });
    expect(s.get(LEASES, 'l', 'ns')?.spec).toEqual({ holderIdentity: 'b' });
    // A second write from the same (now stale) read loses.
    await expect(api.replaceLease('ns', 'l', { ...read, spec: { holderIdentity: 'c' } })).rejects.toSatisfy(isConflict);
    expect(s.get(LEASES, 'l', 'ns')?.spec).toEqual({ holderIdentity: 'b' });
  });
});
