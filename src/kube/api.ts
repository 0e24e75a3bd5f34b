import * as k8s from '@kubernetes/client-node';
import { API_GROUP, API_VERSION } from '../api/cachedimage.js';
import type { EventBody, NodeImageCacheStatus } from './mapping.js';

/**
 * The Kubernetes I/O of cluster mode, and nothing else: lists for the informers and the writes
 * (merge patches of the VMI annotation and of CRD status, Events, the NodeImageCache object).
 */

export const KUBEVIRT_GROUP = 'kubevirt.io';
export const KUBEVIRT_VERSION = 'v1';
export const VMI_PLURAL = 'virtualmachineinstances';
export const CACHEDIMAGE_PLURAL = 'cachedimages';
export const NODEIMAGECACHE_PLURAL = 'nodeimagecaches';
export const VMIM_PLURAL = 'virtualmachineinstancemigrations';
export const LEASE_GROUP = 'coordination.k8s.io';

export const paths = {
  vmis: `/apis/${KUBEVIRT_GROUP}/${KUBEVIRT_VERSION}/${VMI_PLURAL}`,
  pods: '/api/v1/pods',
  cachedImages: `/apis/${API_GROUP}/${API_VERSION}/${CACHEDIMAGE_PLURAL}`,
  nodeImageCaches: `/apis/${API_GROUP}/${API_VERSION}/${NODEIMAGECACHE_PLURAL}`,
  nodes: '/api/v1/nodes',
};

type List = k8s.KubernetesListObject<k8s.KubernetesObject>;

/** The fields of a VirtualMachineInstanceMigration that the agent reads. */
export interface VmiMigrationObject {
  metadata?: { name?: string; uid?: string };
  spec?: { vmiName?: string };
  status?: { phase?: string };
}

/** JSON merge patch, not the client's default (strategic merge, which CRDs do not support). */
const mergePatch = (): k8s.ConfigurationOptions => k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);

export function isNotFound(e: unknown): boolean {
  return (e as { code?: unknown } | null)?.code === 404;
}
export function isConflict(e: unknown): boolean {
  return (e as { code?: unknown } | null)?.code === 409;
}

/** Loads the kubeconfig: a file when given, else in-cluster, else KUBECONFIG or ~/.kube/config. */
export function loadKubeConfig(file?: string): k8s.KubeConfig {
  const kc = new k8s.KubeConfig();
  if (file) kc.loadFromFile(file);
  else kc.loadFromDefault();
  return kc;
}

export class KubeApi {
  private readonly custom: k8s.CustomObjectsApi;
  private readonly core: k8s.CoreV1Api;
  private readonly coordination: k8s.CoordinationV1Api;

  constructor(readonly kubeConfig: k8s.KubeConfig) {
    this.custom = kubeConfig.makeApiClient(k8s.CustomObjectsApi);
    this.core = kubeConfig.makeApiClient(k8s.CoreV1Api);
    this.coordination = kubeConfig.makeApiClient(k8s.CoordinationV1Api);
  }

  listVmis = (labelSelector: string) => (): Promise<List> =>
    this.custom.listClusterCustomObject({ group: KUBEVIRT_GROUP, version: KUBEVIRT_VERSION, plural: VMI_PLURAL, labelSelector }) as Promise<List>;

  listPods = (labelSelector: string, fieldSelector: string) => (): Promise<List> =>
    this.core.listPodForAllNamespaces({ labelSelector, fieldSelector }) as Promise<List>;

  listCachedImages = (): Promise<List> =>
    this.custom.listClusterCustomObject({ group: API_GROUP, version: API_VERSION, plural: CACHEDIMAGE_PLURAL }) as Promise<List>;

  listNodeImageCaches = (): Promise<List> =>
    this.custom.listClusterCustomObject({ group: API_GROUP, version: API_VERSION, plural: NODEIMAGECACHE_PLURAL }) as Promise<List>;

  /** Nodes (all, or those a field selector such as `metadata.name=<node>` selects). */
  listNodes = (fieldSelector?: string) => (): Promise<List> =>
    this.core.listNode({ ...(fieldSelector ? { fieldSelector } : {}) }) as Promise<List>;

  /** One VMI, or undefined when it does not exist (any other failure throws). */
  async getVmi(namespace: string, name: string): Promise<k8s.KubernetesObject | undefined> {
    try {
      return (await this.custom.getNamespacedCustomObject({ group: KUBEVIRT_GROUP, version: KUBEVIRT_VERSION, plural: VMI_PLURAL, namespace, name })) as k8s.KubernetesObject;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** The VirtualMachineInstanceMigrations of a namespace. */
  async listVmiMigrations(namespace: string): Promise<VmiMigrationObject[]> {
    const list = (await this.custom.listNamespacedCustomObject({ group: KUBEVIRT_GROUP, version: KUBEVIRT_VERSION, plural: VMIM_PLURAL, namespace })) as { items?: VmiMigrationObject[] };
    return list.items ?? [];
  }

  /** Deletes a VirtualMachineInstanceMigration (what `virtctl migrate-cancel` does); one already gone is not an error. */
  async deleteVmiMigration(namespace: string, name: string): Promise<void> {
    try {
      await this.custom.deleteNamespacedCustomObject({ group: KUBEVIRT_GROUP, version: KUBEVIRT_VERSION, plural: VMIM_PLURAL, namespace, name });
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
  }

  async patchVmi(namespace: string, name: string, body: object): Promise<void> {
    await this.custom.patchNamespacedCustomObject(
      { group: KUBEVIRT_GROUP, version: KUBEVIRT_VERSION, plural: VMI_PLURAL, namespace, name, body },
      mergePatch(),
    );
  }

  async createEvent(e: EventBody): Promise<void> {
    await this.core.createNamespacedEvent({ namespace: e.metadata.namespace, body: e });
  }

  /** Creates the node's NodeImageCache if missing (status is only written through /status). */
  async ensureNodeImageCache(node: string): Promise<void> {
    try {
      await this.custom.getClusterCustomObject({ group: API_GROUP, version: API_VERSION, plural: NODEIMAGECACHE_PLURAL, name: node });
      return;
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
    try {
      await this.custom.createClusterCustomObject({
        group: API_GROUP,
        version: API_VERSION,
        plural: NODEIMAGECACHE_PLURAL,
        body: { apiVersion: `${API_GROUP}/${API_VERSION}`, kind: 'NodeImageCache', metadata: { name: node, labels: { 'kubevirt-spdk.io/node': node } } },
      });
    } catch (e) {
      if (!isConflict(e)) throw e;
    }
  }

  async patchNodeImageCacheStatus(node: string, status: NodeImageCacheStatus): Promise<void> {
    await this.custom.patchClusterCustomObjectStatus(
      { group: API_GROUP, version: API_VERSION, plural: NODEIMAGECACHE_PLURAL, name: node, body: { status } },
      mergePatch(),
    );
  }

  /** Merge patch of `CachedImage.status` (its one writer is the cluster-wide controller); null removes a field. */
  async patchCachedImageStatus(name: string, status: { readyNodes: number; readyNodeNames?: string[]; prefetchNodes?: string[] | null }): Promise<void> {
    await this.custom.patchClusterCustomObjectStatus(
      { group: API_GROUP, version: API_VERSION, plural: CACHEDIMAGE_PLURAL, name, body: { status } },
      mergePatch(),
    );
  }

  /** A Lease, or undefined when it does not exist. */
  async getLease(namespace: string, name: string): Promise<k8s.V1Lease | undefined> {
    try {
      return await this.coordination.readNamespacedLease({ name, namespace });
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** Creates a Lease; a 409 (someone else created it first) throws. */
  async createLease(namespace: string, lease: k8s.V1Lease): Promise<k8s.V1Lease> {
    return await this.coordination.createNamespacedLease({ namespace, body: lease });
  }

  /** Replaces a Lease; its metadata.resourceVersion makes this a compare-and-swap (409 when stale). */
  async replaceLease(namespace: string, name: string, lease: k8s.V1Lease): Promise<k8s.V1Lease> {
    return await this.coordination.replaceNamespacedLease({ name, namespace, body: lease });
  }
}
