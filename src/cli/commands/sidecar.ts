/**
 * `kubevirt-spdk sidecar`: the KubeVirt hook sidecar. Runs until SIGTERM/SIGINT or
 * virt-launcher's v1alpha3 Shutdown call, then stops gracefully, removes its socket and exits 0
 * (so that the launcher pod terminates).
 */
import { z } from 'zod';
import { createLogger } from '../../log.js';
import { stopSignal } from '../signals.js';
import { DEFAULT_SOCKET_DIR } from '../../converter/index.js';
import { DEFAULT_HOOKS_DIR, startSidecar } from '../../sidecar/server.js';
import { CALLBACK_VERSIONS } from '../../sidecar/versions.js';
import { defineCommand, oneOf, text, type Command } from '../../config.js';

const SidecarConfigSchema = z.object({
  socketDir: text('DIR').default(DEFAULT_HOOKS_DIR).describe('Hooks directory virt-launcher scans for hook sockets.'),
  vhostSocketDir: text('DIR').default(DEFAULT_SOCKET_DIR).describe('vhost socket directory inside the pod, written into the domain XML.'),
  version: oneOf(CALLBACK_VERSIONS)
    .optional()
    .describe('Advertise only this Callbacks version; default all, and virt-launcher picks the newest it speaks (`v1alpha3`, with Shutdown, from KubeVirt v1.2.0).'),
});

export const command: Command<typeof SidecarConfigSchema> = {
  ...defineCommand({ name: 'sidecar', schema: SidecarConfigSchema }),
  async run(c) {
    const logger = createLogger('sidecar');
    let stop: () => void = () => undefined;
    const stopped = Promise.race<string>([stopSignal(), new Promise<string>((resolve) => (stop = () => resolve('shutdown call')))]);
    const sidecar = await startSidecar({
      hooksDir: c.socketDir,
      vhostSocketDir: c.vhostSocketDir,
      ...(c.version === undefined ? {} : { versions: [c.version] }),
      logger,
      onShutdownRequest: () => stop(),
    });
    const reason = await stopped;
    logger.info({ reason }, 'stopping');
    await sidecar.close();
    return 0;
  },
};
