/**
 * `kubevirt-spdk device-plugin --vhost-dir DIR --state-dir DIR [--slots 32]
 *   [--plugin-dir /var/lib/kubelet/device-plugins] [--health-socket PATH]
 *   [--prestart-timeout 25s] [--metrics-port PORT]`
 * Without --health-socket every slot is always reported Healthy.
 */
import { parseArgs } from 'node:util';
import { createLogger } from '../../log.js';
import { stopSignal } from '../signals.js';
import { parseDuration } from '../../api/quantity.js';
import { DevicePluginServer, DEFAULT_PLUGIN_DIR, DEFAULT_PRESTART_TIMEOUT_MS } from '../../../deviceplugin/server.js';
import { ManualHealth, SocketProbeHealth, type HealthSource } from '../../../deviceplugin/health.js';
import { MAX_SLOTS } from '../../../deviceplugin/slots.js';
import { startStatusServer } from '../../metrics/server.js';

const USAGE = `usage: kubevirt-spdk device-plugin --vhost-dir DIR --state-dir DIR [--slots 32]
       [--plugin-dir ${DEFAULT_PLUGIN_DIR}] [--health-socket PATH] [--prestart-timeout ${DEFAULT_PRESTART_TIMEOUT_MS / 1000}s]
       [--metrics-port PORT] (serves /metrics, /healthz, /readyz over plain HTTP)
`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'vhost-dir': { type: 'string' },
      'state-dir': { type: 'string' },
      slots: { type: 'string', default: '32' },
      'plugin-dir': { type: 'string', default: DEFAULT_PLUGIN_DIR },
      'health-socket': { type: 'string' },
      'prestart-timeout': { type: 'string', default: `${DEFAULT_PRESTART_TIMEOUT_MS / 1000}s` },
      'metrics-port': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const slots = Number(values.slots);
  const timeoutMs = parseDuration(values['prestart-timeout']);
  const metricsPort = values['metrics-port'] === undefined ? undefined : Number(values['metrics-port']);
  const problems = [
    ...(metricsPort === undefined || (Number.isInteger(metricsPort) && metricsPort >= 0 && metricsPort < 65536)
      ? []
      : [`--metrics-port: ${values['metrics-port']} is not a TCP port (0-65535)`]),
    ...(['vhost-dir', 'state-dir'] as const).filter((k) => !values[k]).map((k) => `--${k}: is required`),
    ...(Number.isInteger(slots) && slots >= 1 && slots <= MAX_SLOTS ? [] : [`--slots: ${values.slots} must be an integer in 1..${MAX_SLOTS}`]),
    ...(timeoutMs !== undefined && timeoutMs > 0 && timeoutMs < 30_000
      ? []
      : [`--prestart-timeout: ${values['prestart-timeout']} must be a duration above 0 and below kubelet's 30s`]),
  ];
  if (problems.length) {
    process.stderr.write(`kubevirt-spdk device-plugin: ${problems.join('; ')}\n${USAGE}`);
    return 2;
  }
  const logger = createLogger('device-plugin');
  const health: HealthSource = values['health-socket'] ? new SocketProbeHealth(values['health-socket']) : new ManualHealth(true);
  const server = new DevicePluginServer({
    pluginDir: values['plugin-dir'],
    vhostDir: values['vhost-dir'] as string,
    stateDir: values['state-dir'] as string,
    slotCount: slots,
    health,
    preStartTimeoutMs: timeoutMs,
    logger,
  });
  await server.start();
  const statusServer =
    metricsPort === undefined
      ? undefined
      : await startStatusServer({ port: metricsPort, registry: server.metrics.registry, ready: () => health.healthy() || 'vhost target unhealthy' });
  if (statusServer) logger.info({ port: statusServer.port }, 'serving /metrics, /healthz, /readyz');
  logger.info({ signal: await stopSignal() }, 'shutting down');
  await server.close();
  await statusServer?.close();
  health.close();
  return 0;
}
