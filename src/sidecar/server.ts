/**
 * The KubeVirt hook sidecar: a gRPC server on a unix socket in virt-launcher's hooks directory.
 * virt-launcher calls Info (within 1 s) to learn our hook points and versions, then
 * OnDefineDomain with the domain XML and the VMI; we answer with convertDomain's rewrite.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { z } from 'zod';
import { ValidationError } from '../api/errors.js';
import { hasSpdkVolumes, parseVmi, spdkVolumesOf } from '../api/vmi.js';
import { convertDomain } from '../converter/index.js';
import { decodeUtf8Strict } from '../converter/utf8.js';
import { silentLogger, type Logger } from '../log.js';
import { CALLBACK_VERSIONS, hookServices, type CallbackVersion } from './protos.js';

export const DEFAULT_HOOKS_DIR = '/var/run/kubevirt-hooks';
export const HOOK_NAME = 'kubevirt-spdk';
export const ON_DEFINE_DOMAIN = 'OnDefineDomain';

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

type Callback = (err: grpc.ServiceError | null, value?: unknown) => void;
type Call = { request: unknown };

function grpcError(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}

/**
 * OnDefineDomain's core, without gRPC: VMI JSON + domain XML -> domain XML. Throws
 * ValidationError for input it refuses.
 */
export function onDefineDomain(params: OnDefineDomainParams, vhostSocketDir: string | undefined, logger: Logger): Buffer {
  let doc: unknown;
  try {
    doc = JSON.parse(decodeUtf8Strict(params.vmi, 'vmi'));
  } catch (e) {
    if (e instanceof ValidationError) throw e;
    throw new ValidationError([`vmi: not valid JSON: ${(e as Error).message}`]);
  }
  const vmi = parseVmi(doc);
  const log = logger.child({ vmi: `${vmi.metadata.namespace}/${vmi.metadata.name}`, uid: vmi.metadata.uid });
  if (!hasSpdkVolumes(vmi)) {
    log.debug('no kubevirt-spdk.io/volumes annotation: domain unchanged');
    return params.domainXML;
  }
  const out = convertDomain(decodeUtf8Strict(params.domainXML, 'domain XML'), vmi, vhostSocketDir === undefined ? {} : { socketDir: vhostSocketDir });
  log.info({ disks: spdkVolumesOf(vmi).map((v) => v.name) }, 'domain rewritten with vhost-user disks');
  return Buffer.from(out, 'utf8');
}

export async function startSidecar(options: SidecarOptions = {}): Promise<Sidecar> {
  const logger = options.logger ?? silentLogger;
  const hooksDir = options.hooksDir ?? DEFAULT_HOOKS_DIR;
  const socketPath = path.join(hooksDir, options.socketName ?? `${HOOK_NAME}-${randomBytes(4).toString('hex')}.sock`);
  const versions = options.versions ?? CALLBACK_VERSIONS;
  const services = hookServices();

  const handleDefine = (call: Call, callback: Callback): void => {
    const started = process.hrtime.bigint();
    try {
      const parsed = OnDefineDomainParamsSchema.safeParse(call.request);
      if (!parsed.success) throw new ValidationError(['OnDefineDomainParams: domainXML and vmi must be bytes']);
      const domainXML = onDefineDomain(parsed.data, options.vhostSocketDir, logger);
      logger.debug({ ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'OnDefineDomain answered');
      callback(null, { domainXML });
    } catch (e) {
      if (e instanceof ValidationError) {
        logger.warn({ problems: e.problems }, 'OnDefineDomain refused');
        callback(grpcError(grpc.status.INVALID_ARGUMENT, e.message));
      } else {
        logger.error({ err: e }, 'OnDefineDomain failed');
        callback(grpcError(grpc.status.INTERNAL, `kubevirt-spdk: ${(e as Error).message}`));
      }
    }
  };
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
      callback(null, { name: HOOK_NAME, hookPoints: [{ name: ON_DEFINE_DOMAIN, priority: 0 }], versions: [...versions] }),
  });
  const perVersion: Record<CallbackVersion, grpc.UntypedServiceImplementation> = {
    v1alpha1: { OnDefineDomain: handleDefine },
    v1alpha2: { OnDefineDomain: handleDefine, PreCloudInitIso: handlePreCloudInitIso },
    v1alpha3: { OnDefineDomain: handleDefine, PreCloudInitIso: handlePreCloudInitIso, Shutdown: handleShutdown },
  };
  for (const v of CALLBACK_VERSIONS) server.addService(services.callbacks[v].service, perVersion[v]);

  await mkdir(hooksDir, { recursive: true });
  // A leftover socket of a crashed run with the same name would make bind fail.
  await rm(socketPath, { force: true });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  logger.info({ socket: socketPath, versions }, 'hook sidecar listening');

  let closing: Promise<void> | undefined;
  return {
    socketPath,
    close: () => {
      closing ??= (async () => {
        await new Promise<void>((resolve) => {
          // Running calls get a few seconds; virt-launcher's own timeouts are shorter anyway.
          const force = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, 5000);
          server.tryShutdown(() => {
            clearTimeout(force);
            resolve();
          });
        });
        await rm(socketPath, { force: true });
        logger.info({ socket: socketPath }, 'hook sidecar stopped');
      })();
      return closing;
    },
  };
}
