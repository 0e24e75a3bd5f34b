/**
 * KubeVirt's hook API (proto/kubevirt/hooks/*.proto), loaded once with @grpc/proto-loader.
 * Field names keep their proto spelling (keepCase), so `domainXML` and `hookPoints` read as in
 * KubeVirt's API.
 */
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath } from '../proto.js';
import { CALLBACK_VERSIONS, type CallbackVersion } from './versions.js';

export { CALLBACK_VERSIONS, type CallbackVersion };

const PROTO_FILES = ['kubevirt/hooks/info.proto', ...CALLBACK_VERSIONS.map((v) => `kubevirt/hooks/${v}.proto`)];

export interface HookServices {
  info: grpc.ServiceClientConstructor;
  callbacks: Record<CallbackVersion, grpc.ServiceClientConstructor>;
}

function lookup(root: grpc.GrpcObject, dotted: string): grpc.ServiceClientConstructor {
  let node: unknown = root;
  for (const part of dotted.split('.')) node = (node as Record<string, unknown> | undefined)?.[part];
  if (typeof node !== 'function' || !('service' in node)) throw new Error(`hook protos: service ${dotted} missing`);
  return node as grpc.ServiceClientConstructor;
}

let cached: HookServices | undefined;

/** The Info service and the Callbacks service of each version (client constructors carry `.service`). */
export function hookServices(): HookServices {
  if (cached) return cached;
  const dir = protoPath('');
  const def = protoLoader.loadSync(
    PROTO_FILES.map((f) => path.join(dir, f)),
    { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [dir] },
  );
  const root = grpc.loadPackageDefinition(def);
  cached = {
    info: lookup(root, 'kubevirt.hooks.info.Info'),
    callbacks: {
      v1alpha1: lookup(root, 'kubevirt.hooks.v1alpha1.Callbacks'),
      v1alpha2: lookup(root, 'kubevirt.hooks.v1alpha2.Callbacks'),
      v1alpha3: lookup(root, 'kubevirt.hooks.v1alpha3.Callbacks'),
    },
  };
  return cached;
}
