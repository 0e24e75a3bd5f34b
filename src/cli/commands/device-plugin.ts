/**
 * `kubevirt-spdk device-plugin`: the kubelet device plugin for vhost slots. Without
 * --health-socket every slot is always reported Healthy.
 */
import { z } from 'zod';
import { createLogger } from '../../log.js';
import { stopSignal } from '../signals.js';
import { DevicePluginServer, DEFAULT_PLUGIN_DIR, DEFAULT_PRESTART_TIMEOUT_MS } from '../../../deviceplugin/server.js';
import { ManualHealth, SocketProbeHealth, type HealthSource } from '../../../deviceplugin/health.js';
import { MAX_SLOTS } from '../../../deviceplugin/slots.js';
import { startStatusServer } from '../../metrics/server.js';
import { defineCommand, duration, int, port, text, type Command } from '../../config.js';

/** kubelet gives PreStartContainer 30 s; the plugin must answer before that. */
const KUBELET_PRESTART_MS = 30_000;

const DevicePluginConfigSchema = z.object({
  vhostDir: text('DIR').describe('Host directory holding the slot directories (`<vhost-dir>/slot-NN`).'),
  stateDir: text('DIR').describe("The agent's state directory: PreStartContainer waits on `slots/<slot>.json`."),
  slots: int({ min: 1, max: MAX_SLOTS }).default('32').describe('Number of vhost slots this node advertises (`kubevirt-spdk.io/vhost-slot` capacity).'),
  pluginDir: text('DIR').default(DEFAULT_PLUGIN_DIR).describe('kubelet device plugin directory (kubelet.sock lives there).'),
  healthSocket: text('PATH').optional().describe('spdk_tgt RPC socket to probe; slots turn Unhealthy when it does not answer. Without it slots are always Healthy.'),
  prestartTimeout: duration({ above: 0, below: KUBELET_PRESTART_MS, bounds: "above 0 and below kubelet's 30s" })
    .default(`${DEFAULT_PRESTART_TIMEOUT_MS / 1000}s`)
    .describe('How long PreStartContainer waits for the slot to be ready.'),
  metricsPort: port().optional().describe('Serve `/metrics` (Prometheus), `/healthz` and `/readyz` over plain HTTP on this TCP port. No metrics server when absent.'),
});

export const command: Command<typeof DevicePluginConfigSchema> = {
  ...defineCommand({ name: 'device-plugin', schema: DevicePluginConfigSchema }),
  async run(c) {
    const logger = createLogger('device-plugin');
    const health: HealthSource = c.healthSocket ? new SocketProbeHealth(c.healthSocket) : new ManualHealth(true);
    const server = new DevicePluginServer({
      pluginDir: c.pluginDir,
      vhostDir: c.vhostDir,
      stateDir: c.stateDir,
      slotCount: c.slots,
      health,
      preStartTimeoutMs: c.prestartTimeout,
      logger,
    });
    await server.start();
    const statusServer =
      c.metricsPort === undefined
        ? undefined
        : await startStatusServer({ port: c.metricsPort, registry: server.metrics.registry, ready: () => health.healthy() || 'vhost target unhealthy' });
    if (statusServer) logger.info({ port: statusServer.port }, 'serving /metrics, /healthz, /readyz');
    logger.info({ signal: await stopSignal() }, 'shutting down');
    await server.close();
    await statusServer?.close();
    health.close();
    return 0;
  },
};
