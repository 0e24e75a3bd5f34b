/** A fake kubelet PodResources gRPC server on a unix socket, listing the slots a test sets. */
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadPodResourcesProto } from '../../deviceplugin/proto.js';
import { VHOST_SLOT_RESOURCE } from '../../src/api/volumes.js';
import type { PodSlot } from '../../src/kube/podresources.js';

export interface FakePodResources {
  server: grpc.Server;
  socket: string;
  /** What List answers: edit it in place. */
  slots: PodSlot[];
}

export async function startFakePodResources(dir: string): Promise<FakePodResources> {
  const slots: PodSlot[] = [];
  const server = new grpc.Server();
  server.addService(loadPodResourcesProto().v1.PodResourcesLister.service, {
    List: (_call: unknown, cb: grpc.sendUnaryData<unknown>) =>
      cb(null, {
        pod_resources: slots.map((s) => ({ name: s.pod, namespace: s.namespace, containers: [{ name: s.container, devices: [{ resource_name: VHOST_SLOT_RESOURCE, device_ids: [s.slot] }] }] })),
      }),
    Get: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb({ code: grpc.status.UNIMPLEMENTED }),
  });
  const socket = path.join(dir, 'pr.sock');
  await new Promise<void>((res, rej) => server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
  return { server, socket, slots };
}
