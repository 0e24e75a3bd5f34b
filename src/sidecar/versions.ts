/**
 * KubeVirt hook Callbacks versions (pkg/hooks/v1alpha1..v1alpha3), without gRPC so that the
 * webhook can name them without loading the protos. virt-launcher picks the newest version
 * that both sides list: v1alpha3 from KubeVirt v1.2.0 (it adds Shutdown), v1alpha2 before.
 */
export const CALLBACK_VERSIONS = ['v1alpha1', 'v1alpha2', 'v1alpha3'] as const;
export type CallbackVersion = (typeof CALLBACK_VERSIONS)[number];

export function isCallbackVersion(v: string): v is CallbackVersion {
  return (CALLBACK_VERSIONS as readonly string[]).includes(v);
}
