/**
 * The KubeVirt >= v1.9 structured-plugin domain hook (VEP 190): a gRPC DomainHookService on the
 * unix socket that our Plugin CR names (manifests/kubevirt/plugin.yaml). virt-launcher calls
 * MutateDomain with the domain XML, the VMI and why it calls (Boot, MigrationSource,
 * MigrationTarget); we answer with the same rewrite as the hook sidecar's OnDefineDomain: one
 * converter, two protocols. The plugin API has no Shutdown: the container is a native sidecar
 * (restartPolicy Always), which kubelet stops with SIGTERM once virt-launcher's compute
 * container has exited.
 */
import * as grpc from '@grpc/grpc-js';
import { z } from 'zod';
import { MAX_SOCKET_PATH_BYTES, socketPathTooLong } from '../api/limits.js';
import { ValidationError } from '../api/errors.js';
import { silentLogger, type Logger } from '../log.js';
import { answerRewrite, closeUnix, listenUnix, type Callback } from '../sidecar/listen.js';
import { rewriteDomain } from '../sidecar/rewrite.js';
import { domainHookService } from './protos.js';

/** Our Plugin CR's name: upstream requires its sockets under /var/run/kubevirt-plugin/<name>/. */
export const PLUGIN_NAME = 'kubevirt-spdk';
export const PLUGIN_SOCKET_BASE_DIR = '/var/run/kubevirt-plugin';
export const DEFAULT_PLUGIN_SOCKET = `${PLUGIN_SOCKET_BASE_DIR}/${PLUGIN_NAME}/hook.sock`;
/** The only domain_type virt-launcher sends. */
export const DOMAIN_TYPE_LIBVIRT = 'libvirt';
/** Upstream's InvocationContext values (kubevirt.io/api/plugin/v1alpha1). */
export const INVOCATION_CONTEXTS = ['Boot', 'MigrationSource', 'MigrationTarget'] as const;
/** sun_path holds 108 bytes with the terminating NUL. */

const Bytes = z.instanceof(Buffer);
export const MutateDomainRequestSchema = z.object({
  domain_type: z.string(),
  domain: Bytes,
  vmi: Bytes,
  sidecar_context: z.object({ invocation_context: z.string() }).nullable(),
});
export type MutateDomainRequest = z.infer<typeof MutateDomainRequestSchema>;

/**
 * MutateDomain's core, without gRPC. Throws ValidationError naming the field for a request we
 * refuse. The rewrite is idempotent, so every invocation context gets the same answer (on a
 * migration target the domain already carries our disks and is returned as it was).
 */
export function mutateDomain(req: MutateDomainRequest, vhostSocketDir: string | undefined, logger: Logger): Buffer {
  const problems: string[] = [];
  if (req.domain_type !== DOMAIN_TYPE_LIBVIRT) problems.push(`domain_type: must be "${DOMAIN_TYPE_LIBVIRT}", found ${JSON.stringify(req.domain_type)}`);
  if (req.domain.length === 0) problems.push('domain: is empty');
  if (problems.length) throw new ValidationError(problems);
  const context = req.sidecar_context?.invocation_context ?? '';
  const log = logger.child({ invocationContext: context });
  // A context added upstream later is not a reason to fail a VM: the rewrite does not depend on it.
  if (!(INVOCATION_CONTEXTS as readonly string[]).includes(context)) log.warn('unknown sidecar_context.invocation_context: rewriting as for Boot');
  return rewriteDomain({ domainXML: req.domain, vmi: req.vmi }, vhostSocketDir, log);
}

/** A socket path the server can bind and KubeVirt accepts: ends with .sock, fits sun_path. */
export function checkSocketPath(socketPath: string): string[] {
  const problems: string[] = [];
  if (!socketPath.endsWith('.sock')) problems.push(`socket: ${JSON.stringify(socketPath)} must end with .sock`);
  if (socketPathTooLong(socketPath)) problems.push(`socket: ${JSON.stringify(socketPath)} is longer than ${MAX_SOCKET_PATH_BYTES} bytes (unix socket limit)`);
  return problems;
}

/**
 * Upstream's rules for a Plugin CR's sidecar socketPath (KubeVirt's admission policy and
 * virt-launcher's check): the above, and a path under /var/run/kubevirt-plugin/<plugin name>/.
 */
export function checkPluginSocketPath(socketPath: string, pluginName: string): string[] {
  const dir = `${PLUGIN_SOCKET_BASE_DIR}/${pluginName}/`;
  const inside = socketPath.startsWith(dir) && !socketPath.slice(dir.length).split('/').some((p) => p === '' || p === '.' || p === '..');
  return [...(inside ? [] : [`socketPath: ${JSON.stringify(socketPath)} must be a path under ${dir}`]), ...checkSocketPath(socketPath)];
}

export interface PluginServerOptions {
  socketPath: string;
  /** vhost socket directory inside the pod, passed to the converter. */
  vhostSocketDir?: string;
  logger?: Logger;
}

export interface PluginServer {
  socketPath: string;
  close(): Promise<void>;
}

export async function startPluginServer(options: PluginServerOptions): Promise<PluginServer> {
  const logger = options.logger ?? silentLogger;
  const { socketPath } = options;
  const server = new grpc.Server();
  server.addService(domainHookService().service, {
    MutateDomain: (call: { request: unknown }, callback: Callback) =>
      answerRewrite('MutateDomain', logger, callback, () => {
        const parsed = MutateDomainRequestSchema.safeParse(call.request);
        if (!parsed.success) throw new ValidationError(['MutateDomainRequest: domain and vmi must be bytes, domain_type a string']);
        return { domain: mutateDomain(parsed.data, options.vhostSocketDir, logger) };
      }),
  });
  await listenUnix(server, socketPath);
  logger.info({ socket: socketPath, plugin: PLUGIN_NAME }, 'plugin domain hook listening');
  let closing: Promise<void> | undefined;
  return {
    socketPath,
    close: () => {
      closing ??= closeUnix(server, socketPath).then(() => logger.info({ socket: socketPath }, 'plugin domain hook stopped'));
      return closing;
    },
  };
}
