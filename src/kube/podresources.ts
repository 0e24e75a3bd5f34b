/**
 * Allocate does not say which pod it serves; the kubelet's PodResources API does. This maps
 * pods to the vhost slots they hold.
 */
import * as grpc from '@grpc/grpc-js';
import { z } from 'zod';
import { loadPodResourcesProto } from '../../deviceplugin/proto.js';
import { VHOST_SLOT_RESOURCE } from '../api/volumes.js';
import { DEFAULT_POD_RESOURCES_SOCKET } from './kubelet-paths.js';

const ListResponseSchema = z.object({
  pod_resources: z
    .array(
      z.object({
        name: z.string(),
        namespace: z.string(),
        containers: z
          .array(
            z.object({
              name: z.string(),
              devices: z.array(z.object({ resource_name: z.string(), device_ids: z.array(z.string()).default([]) })).default([]),
            }),
          )
          .default([]),
      }),
    )
    .default([]),
});
export type ListPodResourcesResponse = z.input<typeof ListResponseSchema>;

export interface PodSlot {
  namespace: string;
  pod: string;
  container: string;
  slot: string;
}

/** Pure: every (pod, container) that holds one of our slots. */
export function slotsFromPodResources(response: unknown, resource = VHOST_SLOT_RESOURCE): PodSlot[] {
  const parsed = ListResponseSchema.parse(response);
  const out: PodSlot[] = [];
  for (const pod of parsed.pod_resources) {
    for (const c of pod.containers) {
      for (const d of c.devices) {
        if (d.resource_name !== resource) continue;
        for (const slot of d.device_ids) out.push({ namespace: pod.namespace, pod: pod.name, container: c.name, slot });
      }
    }
  }
  return out;
}

type ListFn = (req: object, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;

export class PodResourcesClient {
  private readonly client: grpc.Client & { List: ListFn };

  constructor(socketPath = DEFAULT_POD_RESOURCES_SOCKET) {
    const Ctor = loadPodResourcesProto().v1.PodResourcesLister;
    this.client = new Ctor(`unix://${socketPath}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & { List: ListFn };
  }

  /** Slots held by pods on this node. Bounded: the kubelet answers locally. */
  async listSlots(timeoutMs = 5000): Promise<PodSlot[]> {
    const res = await new Promise<unknown>((resolve, reject) => {
      this.client.List({}, { deadline: Date.now() + timeoutMs }, (err, r) => (err ? reject(err) : resolve(r)));
    });
    return slotsFromPodResources(res);
  }

  close(): void {
    this.client.close();
  }
}
