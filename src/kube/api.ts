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

export const paths = {
  vmis: `/apis/${KUBEVIRT_GROUP}/${KUBEVIRT_VERSION}/${VMI_PLURAL}`,
  pods: '/api/v1/pods',
  cachedImages: `/apis/${API_GROUP}/${API_VERSION}/${CACHEDIMAGE_PLURAL}`,
  nodeImageCaches: `/apis/${API_GROUP}/${API_VERSION}/${NODEIMAGECACHE_PLURAL}`,
};

type List = k8s.KubernetesListObject<k8s.KubernetesObject>;

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

  constructor(readonly kubeConfig: k8s.KubeConfig) {
    this.custom = kubeConfig.makeApiClient(k8s.CustomObjectsApi);
    this.core = kubeConfig.makeApiClient(k8s.CoreV1Api);
  }

  listVmis = (labelSelector: string) => (): Promise<List> =>
    this.custom.listClusterCustomObject({ group: KUBEVIRT_GROUP, version: KUBEVIRT_VERSION, plural: VMI_PLURAL, labelSelector }) as Promise<List>;

  listPods = (labelSelector: string, fieldSelector: string) => (): Promise<List> =>
    this.core.listPodForAllNamespaces({ labelSelector, fieldSelector }) as Promise<List>;

  listCachedImages = (): Promise<List> =>
    this.custom.listClusterCustomObject({ group: API_GROUP, version: API_VERSION, plural: CACHEDIMAGE_PLURAL }) as Promise<List>;

  listNodeImageCaches = (): Promise<List> =>
    this.custom.listClusterCustomObject({ group: API_GROUP, version: API_VERSION, plural: NODEIMAGECACHE_PLURAL }) as Promise<List>;

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

  async patchCachedImageStatus(name: string, status: { readyNodes: number }): Promise<void> {
    await this.custom.patchClusterCustomObjectStatus(
      { group: API_GROUP, version: API_VERSION, plural: CACHEDIMAGE_PLURAL, name, body: { status } },
      mergePatch(),
    );
  }
}
