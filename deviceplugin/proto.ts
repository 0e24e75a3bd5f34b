/** Loads the kubelet protos at run time; their TypeScript types are generated (generated/). */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath } from '../src/proto.js';
import type { ProtoGrpcType as DevicePluginProto } from './generated/deviceplugin/api.js';
import type { ProtoGrpcType as PodResourcesProto } from './generated/podresources/api.js';

/** Same options as the type generator (deviceplugin/gen-types.sh), so the types hold. */
const LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

let devicePlugin: DevicePluginProto | undefined;
let podResources: PodResourcesProto | undefined;

export function loadDevicePluginProto(): DevicePluginProto {
  devicePlugin ??= grpc.loadPackageDefinition(
    protoLoader.loadSync(protoPath('deviceplugin/v1beta1/api.proto'), LOADER_OPTIONS),
  ) as unknown as DevicePluginProto;
  return devicePlugin;
}

export function loadPodResourcesProto(): PodResourcesProto {
  podResources ??= grpc.loadPackageDefinition(
    protoLoader.loadSync(protoPath('podresources/v1/api.proto'), LOADER_OPTIONS),
  ) as unknown as PodResourcesProto;
  return podResources;
}

/** The device plugin API version we speak, sent in RegisterRequest. */
export const DEVICE_PLUGIN_API_VERSION = 'v1beta1';
