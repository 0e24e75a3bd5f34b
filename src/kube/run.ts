import type { Logger } from '../log.js';
import { startStatusServer } from '../metrics/server.js';
import { loadKubeConfig } from './api.js';
import { ClusterAgent, type ClusterAgentOptions } from './cluster.js';
import { PodResourcesClient } from './podresources.js';

export interface RunClusterOptions {
  node: string;
  kubeconfig?: string;
  podResourcesSocket: string;
  metricsPort: number;
  agent: ClusterAgentOptions['agent'];
  logger: Logger;
}

/** `kubevirt-spdk agent` without --standalone: runs until SIGTERM/SIGINT. */
export async function runClusterAgent(o: RunClusterOptions): Promise<number> {
  const log = o.logger;
  const cluster = new ClusterAgent({
    node: o.node,
    kubeConfig: loadKubeConfig(o.kubeconfig),
    podResources: new PodResourcesClient(o.podResourcesSocket),
    agent: o.agent,
    logger: log,
  });
  const stopping = new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await o.agent.backend.start();
  // Served before the informers sync: /healthz answers at once, /readyz says what it waits for.
  const server = await startStatusServer({ port: o.metricsPort, registry: cluster.agent.metrics.registry, ready: cluster.ready });
  log.info({ event: 'metrics-listening', port: server.port }, 'serving /metrics, /healthz, /readyz');
  await cluster.start();
  await stopping;
  log.info({ event: 'stopping' }, 'stopping');
  await cluster.stop();
  await server.close();
  await o.agent.backend.close();
  return 0;
}
