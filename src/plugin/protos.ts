/**
 * KubeVirt's VEP 190 plugin API (proto/kubevirt/plugins/v1alpha1/api.proto), loaded once with
 * @grpc/proto-loader. Field names keep their proto spelling (keepCase): `domain_type`,
 * `sidecar_context.invocation_context`, as in KubeVirt's API.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath } from '../proto.js';

let cached: grpc.ServiceClientConstructor | undefined;

/** The DomainHookService client constructor (it carries `.service` for the server). */
export function domainHookService(): grpc.ServiceClientConstructor {
  if (cached) return cached;
  const dir = protoPath('');
  const def = protoLoader.loadSync(protoPath('kubevirt/plugins/v1alpha1/api.proto'), {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [dir],
  });
  let node: unknown = grpc.loadPackageDefinition(def);
  for (const part of 'kubevirt.hooks.plugins.v1alpha1.DomainHookService'.split('.')) node = (node as Record<string, unknown> | undefined)?.[part];
  if (typeof node !== 'function' || !('service' in node)) throw new Error('plugin protos: service DomainHookService missing');
  cached = node as grpc.ServiceClientConstructor;
  return cached;
}
