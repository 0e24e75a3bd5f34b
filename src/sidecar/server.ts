/**
 * The KubeVirt hook sidecar: a gRPC server on a unix socket in virt-launcher's hooks directory.
 * virt-launcher calls Info (within 1 s) to learn our hook points and versions, picks the newest
 * version it also speaks (v1alpha3, then v1alpha2, then v1alpha1), then calls OnDefineDomain
 * with the domain XML and the VMI; we answer with convertDomain's rewrite. Once QEMU has exited
 * it calls v1alpha3 Shutdown on sidecars that list the Shutdown hook point: that is our cue to
 * exit, or the launcher pod never terminates.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { z } from 'zod';
import { ValidationError } from '../api/errors.js';
import { silentLogger, type Logger } from '../log.js';
import { answerRewrite, closeUnix, grpcError, listenUnix, type Callback } from './listen.js';
import { CALLBACK_VERSIONS, hookServices, type CallbackVersion } from './protos.js';
import { rewriteDomain } from './rewrite.js';

export const DEFAULT_HOOKS_DIR = '/var/run/kubevirt-hooks';
export const HOOK_NAME = 'kubevirt-spdk';
export const ON_DEFINE_DOMAIN = 'OnDefineDomain';
/** Hook point names as KubeVirt spells them (pkg/hooks/info/info.go). */
export const SHUTDOWN = 'Shutdown';

const Bytes = z.instanceof(Buffer);
export const OnDefineDomainParamsSchema = z.object({ domainXML: Bytes, vmi: Bytes });
export const PreCloudInitIsoParamsSchema = z.object({ cloudInitNoCloudSource: Bytes, vmi: Bytes, cloudInitData: Bytes });
export type OnDefineDomainParams = z.infer<typeof OnDefineDomainParamsSchema>;

export interface SidecarOptions {
  /** Directory virt-launcher scans for hook sockets. */
  hooksDir?: string;
  /** Socket file name; default a unique `kubevirt-spdk-<random>.sock`. */
  socketName?: string;
  /** vhost socket directory inside the pod, passed to the converter. */
  vhostSocketDir?: string;
  /** Versions advertised by Info (all three are served either way). */
  versions?: readonly CallbackVersion[];
  logger?: Logger;
  /** virt-launcher's v1alpha3 Shutdown: it is done with us. */
  onShutdownRequest?: () => void;
}

export interface Sidecar {
  socketPath: string;
  /** Stops accepting calls, lets running ones finish (bounded), removes the socket. */
  close(): Promise<void>;
}

type Call = { request: unknown };

/** OnDefineDomain's core, without gRPC: the rewrite shared with the plugin protocol. */
export const onDefineDomain: (params: OnDefineDomainParams, vhostSocketDir: string | undefined, logger: Logger) => Buffer = rewriteDomain;

/**
 * Info's hook points: OnDefineDomain always; Shutdown only with v1alpha3, the only version
 * that has it (virt-launcher calls Shutdown on a v1alpha3 sidecar listing it, and on no other).
 */
export function hookPointsFor(versions: readonly CallbackVersion[]): Array<{ name: string; priority: number }> {
  return [{ name: ON_DEFINE_DOMAIN, priority: 0 }, ...(versions.includes('v1alpha3') ? [{ name: SHUTDOWN, priority: 0 }] : [])];
}

export async function startSidecar(options: SidecarOptions = {}): Promise<Sidecar> {
  const logger = options.logger ?? silentLogger;
  const hooksDir = options.hooksDir ?? DEFAULT_HOOKS_DIR;
  const socketPath = path.join(hooksDir, options.socketName ?? `${HOOK_NAME}-${randomBytes(4).toString('hex')}.sock`);
  const versions = options.versions ?? CALLBACK_VERSIONS;
  const services = hookServices();

  const handleDefine = (call: Call, callback: Callback): void =>
    answerRewrite('OnDefineDomain', logger, callback, () => {
      const parsed = OnDefineDomainParamsSchema.safeParse(call.request);
      if (!parsed.success) throw new ValidationError(['OnDefineDomainParams: domainXML and vmi must be bytes']);
      return { domainXML: onDefineDomain(parsed.data, options.vhostSocketDir, logger) };
    });
  // We do not subscribe to PreCloudInitIso; should it be called anyway, cloud-init passes through.
  const handlePreCloudInitIso = (call: Call, callback: Callback): void => {
    const parsed = PreCloudInitIsoParamsSchema.safeParse(call.request);
    if (!parsed.success) return callback(grpcError(grpc.status.INVALID_ARGUMENT, 'PreCloudInitIsoParams: fields must be bytes'));
    callback(null, { cloudInitNoCloudSource: parsed.data.cloudInitNoCloudSource, cloudInitData: parsed.data.cloudInitData });
  };
  const handleShutdown = (_call: Call, callback: Callback): void => {
    logger.info('Shutdown requested by virt-launcher');
    callback(null, {});
    options.onShutdownRequest?.();
  };

  const server = new grpc.Server();
  server.addService(services.info.service, {
    Info: (_call: Call, callback: Callback) =>
      callback(null, { name: HOOK_NAME, hookPoints: hookPointsFor(versions), versions: [...versions] }),
  });
  const perVersion: Record<CallbackVersion, grpc.UntypedServiceImplementation> = {
    v1alpha1: { OnDefineDomain: handleDefine },
    v1alpha2: { OnDefineDomain: handleDefine, PreCloudInitIso: handlePreCloudInitIso },
    v1alpha3: { OnDefineDomain: handleDefine, PreCloudInitIso: handlePreCloudInitIso, Shutdown: handleShutdown },
  };
  for (const v of CALLBACK_VERSIONS) server.addService(services.callbacks[v].service, perVersion[v]);

  await listenUnix(server, socketPath);
  logger.info({ socket: socketPath, versions, hookPoints: hookPointsFor(versions).map((h) => h.name) }, 'hook sidecar listening');

  let closing: Promise<void> | undefined;
  return {
    socketPath,
    close: () => {
      closing ??= (async () => {
        await closeUnix(server, socketPath);
        logger.info({ socket: socketPath }, 'hook sidecar stopped');
      })();
      return closing;
    },
  };
}
