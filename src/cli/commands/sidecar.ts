/**
 * `kubevirt-spdk sidecar [--socket-dir DIR] [--vhost-socket-dir DIR] [--version V]`: the
 * KubeVirt hook sidecar. Runs until SIGTERM/SIGINT or virt-launcher's v1alpha3 Shutdown call,
 * then stops gracefully, removes its socket and exits 0 (so that the launcher pod terminates).
 */
import { parseArgs } from 'node:util';
import { createLogger } from '../../log.js';
import { stopSignal } from '../signals.js';
import { DEFAULT_SOCKET_DIR } from '../../converter/index.js';
import { DEFAULT_HOOKS_DIR, startSidecar } from '../../sidecar/server.js';
import { CALLBACK_VERSIONS, isCallbackVersion } from '../../sidecar/versions.js';

const USAGE = `usage: kubevirt-spdk sidecar [--socket-dir DIR] [--vhost-socket-dir DIR] [--version V]

  --socket-dir DIR        hooks directory virt-launcher scans (default ${DEFAULT_HOOKS_DIR})
  --vhost-socket-dir DIR  vhost-user socket directory inside the pod (default ${DEFAULT_SOCKET_DIR})
  --version V             advertise only this Callbacks version (${CALLBACK_VERSIONS.join(', ')});
                          default all of them: virt-launcher picks the newest it speaks
                          (v1alpha3 with Shutdown from KubeVirt v1.2.0)
`;

export async function run(argv: string[]): Promise<number> {
  let values: { 'socket-dir'?: string; 'vhost-socket-dir'?: string; version?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        'socket-dir': { type: 'string' },
        'vhost-socket-dir': { type: 'string' },
        version: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (e) {
    process.stderr.write(`kubevirt-spdk sidecar: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const version = values.version;
  if (version !== undefined && !isCallbackVersion(version)) {
    process.stderr.write(`kubevirt-spdk sidecar: --version: "${version}" must be one of ${CALLBACK_VERSIONS.join(', ')}\n`);
    return 2;
  }
  const logger = createLogger('sidecar');
  let stop: () => void = () => undefined;
  const stopped = Promise.race<string>([stopSignal(), new Promise<string>((resolve) => (stop = () => resolve('shutdown call')))]);
  const sidecar = await startSidecar({
    hooksDir: values['socket-dir'] ?? DEFAULT_HOOKS_DIR,
    ...(values['vhost-socket-dir'] === undefined ? {} : { vhostSocketDir: values['vhost-socket-dir'] }),
    ...(version === undefined ? {} : { versions: [version] }),
    logger,
    onShutdownRequest: () => stop(),
  });
  const reason = await stopped;
  logger.info({ reason }, 'stopping');
  await sidecar.close();
  return 0;
}
