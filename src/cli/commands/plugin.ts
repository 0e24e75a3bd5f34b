/**
 * `kubevirt-spdk plugin`: the KubeVirt >= v1.9 structured-plugin domain hook (VEP 190
 * DomainHookService.MutateDomain), the sidecar that manifests/kubevirt/plugin.yaml adds to
 * virt-launcher pods. Runs until SIGTERM/SIGINT (kubelet stops the native sidecar after the
 * VM's compute container), then removes its socket, exit 0.
 */
import { z } from 'zod';
import { createLogger } from '../../log.js';
import { stopSignal } from '../signals.js';
import { DEFAULT_SOCKET_DIR } from '../../converter/index.js';
import { DEFAULT_PLUGIN_SOCKET, checkSocketPath, startPluginServer } from '../../plugin/server.js';
import { defineCommand, text, type Command } from '../../config.js';

const PluginConfigSchema = z
  .object({
    socket: text('PATH')
      .default(DEFAULT_PLUGIN_SOCKET)
      .describe('Unix socket the Plugin CR names in `spec.domainHooks[].sidecar.socketPath` (KubeVirt requires it under `/var/run/kubevirt-plugin/<plugin>/`, ending in `.sock`).'),
    vhostSocketDir: text('DIR').default(DEFAULT_SOCKET_DIR).describe('vhost socket directory inside the pod, written into the domain XML.'),
  })
  .superRefine((c, ctx) => {
    // checkSocketPath names the field (`socket: ...`): it becomes the flag.
    for (const p of checkSocketPath(c.socket)) ctx.addIssue({ code: z.ZodIssueCode.custom, path: [], message: `--${p}` });
  });

export const command: Command<typeof PluginConfigSchema> = {
  ...defineCommand({ name: 'plugin', schema: PluginConfigSchema }),
  async run(c) {
    const logger = createLogger('plugin');
    const server = await startPluginServer({ socketPath: c.socket, vhostSocketDir: c.vhostSocketDir, logger });
    logger.info({ signal: await stopSignal() }, 'stopping');
    await server.close();
    return 0;
  },
};
