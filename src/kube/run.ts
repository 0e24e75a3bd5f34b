import type { Logger } from '../log.js';
import { startStatusServer } from '../metrics/server.js';
import { loadKubeConfig } from './api.js';
import type { ClusterAgentOptions } from './cluster.js';
import { createMigratingClusterAgent, exportAddressOf } from './migration.js';
import { PodResourcesClient } from './podresources.js';

export interface RunClusterOptions {
  node: string;
  kubeconfig?: string;
  podResourcesSocket: string;
  metricsPort: number;
  /** This node's IP for migration exports (default: NODE_IP). */
  nodeAddress?: string;
  /** The seed rule's wait (`--seed-wait`); 0: off. */
  seedWaitMs?: number;
  agent: ClusterAgentOptions['agent'];
  logger: Logger;
}

/** `kubevirt-spdk agent` without --standalone: runs until SIGTERM/SIGINT. */
export async function runClusterAgent(o: RunClusterOptions): Promise<number> {
  const log = o.logger;
  const exportAddress = exportAddressOf(o.nodeAddress, process.env);
  if (!exportAddress) log.warn({ event: 'no-node-address' }, 'no --node-address or NODE_IP: this node cannot export node-local disks for live migration');
  const wired = createMigratingClusterAgent({
    node: o.node,
    kubeConfig: loadKubeConfig(o.kubeconfig),
    podResources: new PodResourcesClient(o.podResourcesSocket),
    agent: o.agent,
    logger: log,
    exportAddress,
    // Goldens are served to the other nodes on the same address (qsd: the daemon's one NBD server).
    ...(exportAddress ? { imageExportAddress: exportAddress } : {}),
    ...(o.seedWaitMs ? { imageSeedWaitMs: o.seedWaitMs } : {}),
  });
  const cluster = wired.cluster;
  const stopping = new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await o.agent.backend.start();
  // Served before the informers sync: /healthz answers at once, /readyz says what it waits for.
  const server = await startStatusServer({ port: o.metricsPort, registry: cluster.agent.metrics.registry, ready: cluster.ready });
  log.info({ event: 'metrics-listening', port: server.port }, 'serving /metrics, /healthz, /readyz');
  await wired.start();
  await stopping;
  log.info({ event: 'stopping' }, 'stopping');
  await wired.stop();
  await server.close();
  await o.agent.backend.close();
  return 0;
}
