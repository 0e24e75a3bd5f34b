/**
 * `kubevirt-spdk plugin [--socket PATH] [--vhost-socket-dir DIR]`: the KubeVirt >= v1.9
 * structured-plugin domain hook (VEP 190 DomainHookService.MutateDomain), the sidecar that
 * manifests/kubevirt/plugin.yaml adds to virt-launcher pods. Runs until SIGTERM/SIGINT (kubelet
 * stops the native sidecar after the VM's compute container), then removes its socket, exit 0.
 */
import { parseArgs } from 'node:util';
import { createLogger } from '../../log.js';
import { stopSignal } from '../signals.js';
import { DEFAULT_SOCKET_DIR } from '../../converter/index.js';
import { DEFAULT_PLUGIN_SOCKET, checkSocketPath, startPluginServer } from '../../plugin/server.js';

const USAGE = `usage: kubevirt-spdk plugin [--socket PATH] [--vhost-socket-dir DIR]

  --socket PATH           unix socket the Plugin CR names (default ${DEFAULT_PLUGIN_SOCKET})
  --vhost-socket-dir DIR  vhost-user socket directory inside the pod (default ${DEFAULT_SOCKET_DIR})
`;

export async function run(argv: string[]): Promise<number> {
  let values: { socket?: string; 'vhost-socket-dir'?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        socket: { type: 'string', default: DEFAULT_PLUGIN_SOCKET },
        'vhost-socket-dir': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (e) {
    process.stderr.write(`kubevirt-spdk plugin: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const socketPath = values.socket ?? DEFAULT_PLUGIN_SOCKET;
  const problems = checkSocketPath(socketPath);
  if (problems.length) {
    process.stderr.write(`kubevirt-spdk plugin: ${problems.map((p) => `--${p}`).join('; ')}\n`);
    return 2;
  }
  const logger = createLogger('plugin');
  const server = await startPluginServer({
    socketPath,
    ...(values['vhost-socket-dir'] === undefined ? {} : { vhostSocketDir: values['vhost-socket-dir'] }),
    logger,
  });
  logger.info({ signal: await stopSignal() }, 'stopping');
  await server.close();
  return 0;
}
