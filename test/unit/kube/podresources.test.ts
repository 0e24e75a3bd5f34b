import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { PodResourcesClient, slotsFromPodResources } from '../../../src/kube/podresources.js';
import { loadPodResourcesProto } from '../../../deviceplugin/proto.js';
import { VHOST_SLOT_RESOURCE as SLOT_RESOURCE } from '../../../src/api/volumes.js';

const response = {
  pod_resources: [
    {
      name: 'virt-launcher-vm1-abcde',
      namespace: 'default',
      containers: [
        { name: 'compute', devices: [{ resource_name: SLOT_RESOURCE, device_ids: ['slot-03'] }, { resource_name: 'devices.kubevirt.io/kvm', device_ids: ['kvm'] }] },
        { name: 'hook-sidecar-0', devices: [] },
      ],
    },
    { name: 'other', namespace: 'kube-system', containers: [{ name: 'c', devices: [{ resource_name: 'nvidia.com/gpu', device_ids: ['0'] }] }] },
  ],
};

describe('slotsFromPodResources', () => {
  it('maps each launcher pod to the slot its compute container holds, ignoring other resources', () => {
    expect(slotsFromPodResources(response)).toEqual([{ namespace: 'default', pod: 'virt-launcher-vm1-abcde', container: 'compute', slot: 'slot-03' }]);
  });

  it('rejects a reply of the wrong shape with the field named', () => {
    expect(() => slotsFromPodResources({ pod_resources: [{ name: 1 }] })).toThrow(/name/);
  });
});

describe('PodResourcesClient against a kubelet-like gRPC server on a unix socket', () => {
  let server: grpc.Server | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    server?.forceShutdown();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('lists the slots held by pods', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'pr-'));
    const sock = path.join(dir, 'kubelet.sock');
    const svc = loadPodResourcesProto().v1.PodResourcesLister.service;
    server = new grpc.Server();
    server.addService(svc, {
      List: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, response),
      Get: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED }),
    });
    await new Promise<void>((res, rej) => server!.bindAsync(`unix://${sock}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
    const client = new PodResourcesClient(sock);
    try {
      expect(await client.listSlots()).toEqual([{ namespace: 'default', pod: 'virt-launcher-vm1-abcde', container: 'compute', slot: 'slot-03' }]);
    } finally {
      client.close();
    }
  });
});
