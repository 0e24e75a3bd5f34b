/**
 * `kubevirt-spdk webhook`: the mutating admission webhook. Without --images the CachedImage
 * catalog comes from the cluster (in-cluster config or KUBECONFIG).
 */
import os from 'node:os';
import { z } from 'zod';
import { createLogger } from '../../log.js';
import { stopSignal } from '../signals.js';
import { InformerImageCatalog, StaticImageCatalog, type ImageCatalog } from '../../../webhooks/catalog.js';
import { WebhookServer, DEFAULT_MAX_BODY_BYTES } from '../../../webhooks/server.js';
import { HOOK_SIDECAR_MODES } from '../../../webhooks/mutate.js';
import { DEFAULT_CACHE_AFFINITY_WEIGHT } from '../../../webhooks/affinity.js';
import { defineCommand, int, oneOf, port, text, type Command } from '../../config.js';

const WebhookConfigSchema = z.object({
  tlsCert: text('FILE').describe('Serving certificate (PEM).'),
  tlsKey: text('FILE').describe('Serving key (PEM).'),
  sidecarImage: text('IMAGE').describe('Image of the hook sidecar injected into virt-launcher pods.'),
  images: text('FILE').optional().describe('File of `CachedImage` documents. Without it the catalog comes from the cluster (in-cluster config or KUBECONFIG).'),
  host: text('ADDRESS').default('0.0.0.0').describe('Listen address.'),
  port: port().default('8443').describe('HTTPS port.'),
  metricsPort: port()
    .default('9472')
    .describe('Plain-HTTP port of `/metrics`, `/healthz` and `/readyz` (0 = any free port). Never served on `--port`, which the admission Service exposes to the whole cluster.'),
  metricsHost: text('ADDRESS').default('0.0.0.0').describe('Address the metrics listener binds.'),
  maxBodyBytes: int({ min: 1, value: 'BYTES', message: (t) => `${t} must be a positive integer` })
    .default(String(DEFAULT_MAX_BODY_BYTES))
    .describe('Largest AdmissionReview body accepted.'),
  hookSidecar: oneOf(HOOK_SIDECAR_MODES)
    .default('all')
    .describe(
      'Hook sidecar injected into SPDK VMIs: `all` (lists every Callbacks version; KubeVirt picks `v1alpha3` with Shutdown from v1.2.0, `v1alpha2` before), `v1alpha1`/`v1alpha2`/`v1alpha3` (pinned), or `none` (KubeVirt >= v1.9 with the Plugin CR, see docs/kubevirt-versions.md).',
    ),
  cacheAffinityWeight: int({ min: 0, max: 100, value: 'WEIGHT' })
    .default(String(DEFAULT_CACHE_AFFINITY_WEIGHT))
    .describe(
      "Weight of the *preferred* node affinity term added to a new VMI toward a node that holds all its images (`CachedImage.status.readyNodeNames`, written by `--ready-nodes`); a node holding k of n images gets k/n of it. Never a required term, so a VMI still starts elsewhere (its disk then starts lazily). 0 adds none. A user's own preferred terms weigh up to 100.",
    ),
  readyNodes: z
    .boolean()
    .default(false)
    .describe(
      'Also run the one cluster-wide writer of `CachedImage.status` (`readyNodes` and `readyNodeNames` from the NodeImageCaches, `prefetchNodes` for `spec.prefetch`, which node agents warm); replicas elect a leader on the Lease `kubevirt-spdk-ready-nodes`, so one writes at a time.',
    ),
  leaseNamespace: text('NAME').default('kubevirt-spdk').describe("Namespace of that Lease (the webhook's own)."),
});

export const command: Command<typeof WebhookConfigSchema> = {
  ...defineCommand({ name: 'webhook', schema: WebhookConfigSchema }),
  async run(c) {
    const logger = createLogger('webhook');
    let catalog: ImageCatalog;
    let stopCatalog = async (): Promise<void> => undefined;
    if (c.images) catalog = await StaticImageCatalog.fromFile(c.images);
    else {
      const informer = await InformerImageCatalog.forCluster(logger);
      // Serve /healthz at once; /readyz reports ready once the first list arrived.
      void informer.start();
      catalog = informer;
      stopCatalog = () => informer.stop();
    }
    const server = await WebhookServer.start({
      certFile: c.tlsCert,
      keyFile: c.tlsKey,
      host: c.host,
      port: c.port,
      metricsPort: c.metricsPort,
      metricsHost: c.metricsHost,
      catalog,
      config: { sidecarImage: c.sidecarImage, hookSidecar: c.hookSidecar, cacheAffinityWeight: c.cacheAffinityWeight },
      logger,
      maxBodyBytes: c.maxBodyBytes,
    });
    let stopReadyNodes = async (): Promise<void> => undefined;
    if (c.readyNodes) {
      const [{ startReadyNodes }, { KubeApi, loadKubeConfig }] = await Promise.all([import('../../controller/ready-nodes.js'), import('../../kube/api.js')]);
      // The pod's name is its hostname: one candidate per replica.
      const readyNodes = await startReadyNodes({ api: new KubeApi(loadKubeConfig()), logger, namespace: c.leaseNamespace, identity: os.hostname() });
      stopReadyNodes = () => readyNodes.stop();
    }
    logger.info({ signal: await stopSignal() }, 'shutting down');
    await stopReadyNodes();
    await server.close();
    await stopCatalog();
    return 0;
  },
};
