/**
 * `kubevirt-spdk webhook --tls-cert FILE --tls-key FILE --sidecar-image IMAGE [--images FILE]`
 * Without --images the CachedImage catalog comes from the cluster (in-cluster config or
 * KUBECONFIG).
 */
import os from 'node:os';
import { parseArgs } from 'node:util';
import { createLogger } from '../../log.js';
import { stopSignal } from '../signals.js';
import { InformerImageCatalog, StaticImageCatalog, type ImageCatalog } from '../../../webhooks/catalog.js';
import { WebhookServer, DEFAULT_MAX_BODY_BYTES } from '../../../webhooks/server.js';
import { HOOK_SIDECAR_MODES, type HookSidecarMode } from '../../../webhooks/mutate.js';

const USAGE = `usage: kubevirt-spdk webhook --tls-cert FILE --tls-key FILE --sidecar-image IMAGE
       [--images FILE] [--host 0.0.0.0] [--port 8443] [--max-body-bytes ${DEFAULT_MAX_BODY_BYTES}]
       [--hook-sidecar ${HOOK_SIDECAR_MODES.join('|')}]

  --hook-sidecar  all (default): inject the hook sidecar listing every Callbacks version
                  (KubeVirt picks v1alpha3 with Shutdown from v1.2.0, v1alpha2 before);
                  v1alphaN: pin one version; none: inject no hook sidecar (KubeVirt >= v1.9
                  with the Plugin CR of manifests/kubevirt/plugin.yaml)
       [--metrics-host 0.0.0.0] [--metrics-port 9472] (plain HTTP /metrics, /healthz, /readyz; never on --port)
       [--ready-nodes [--lease-namespace kubevirt-spdk]]

  --ready-nodes   also keep CachedImage status.readyNodes (the one cluster-wide writer: replicas
                  elect a leader on the Lease kubevirt-spdk-ready-nodes in --lease-namespace)
`;

function isHookSidecarMode(v: string): v is HookSidecarMode {
  return (HOOK_SIDECAR_MODES as readonly string[]).includes(v);
}

export async function run(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'sidecar-image': { type: 'string' },
      images: { type: 'string' },
      host: { type: 'string', default: '0.0.0.0' },
      port: { type: 'string', default: '8443' },
      'metrics-port': { type: 'string', default: '9472' },
      'metrics-host': { type: 'string', default: '0.0.0.0' },
      'max-body-bytes': { type: 'string', default: String(DEFAULT_MAX_BODY_BYTES) },
      'hook-sidecar': { type: 'string', default: 'all' },
      'ready-nodes': { type: 'boolean', default: false },
      'lease-namespace': { type: 'string', default: 'kubevirt-spdk' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const missing = (['tls-cert', 'tls-key', 'sidecar-image'] as const).filter((k) => !values[k]);
  const port = Number(values.port);
  const metricsPort = Number(values['metrics-port']);
  const maxBody = Number(values['max-body-bytes']);
  const problems = [
    ...missing.map((k) => `--${k}: is required`),
    ...(Number.isInteger(port) && port >= 0 && port < 65536 ? [] : [`--port: ${values.port} is not a TCP port`]),
    ...(Number.isInteger(metricsPort) && metricsPort >= 0 && metricsPort < 65536 ? [] : [`--metrics-port: ${values['metrics-port']} is not a TCP port`]),
    ...(Number.isInteger(maxBody) && maxBody > 0 ? [] : [`--max-body-bytes: ${values['max-body-bytes']} must be a positive integer`]),
    ...(isHookSidecarMode(values['hook-sidecar']) ? [] : [`--hook-sidecar: "${values['hook-sidecar']}" must be one of ${HOOK_SIDECAR_MODES.join(', ')}`]),
  ];
  if (problems.length) {
    process.stderr.write(`kubevirt-spdk webhook: ${problems.join('; ')}\n${USAGE}`);
    return 2;
  }
  const logger = createLogger('webhook');
  let catalog: ImageCatalog;
  let stopCatalog = async (): Promise<void> => undefined;
  if (values.images) catalog = await StaticImageCatalog.fromFile(values.images);
  else {
    const informer = await InformerImageCatalog.forCluster(logger);
    // Serve /healthz at once; /readyz reports ready once the first list arrived.
    void informer.start();
    catalog = informer;
    stopCatalog = () => informer.stop();
  }
  const server = await WebhookServer.start({
    certFile: values['tls-cert'] as string,
    keyFile: values['tls-key'] as string,
    host: values.host,
    port,
    metricsPort,
    metricsHost: values['metrics-host'],
    catalog,
    config: { sidecarImage: values['sidecar-image'] as string, hookSidecar: values['hook-sidecar'] as HookSidecarMode },
    logger,
    maxBodyBytes: maxBody,
  });
  let stopReadyNodes = async (): Promise<void> => undefined;
  if (values['ready-nodes']) {
    const [{ startReadyNodes }, { KubeApi, loadKubeConfig }] = await Promise.all([import('../../controller/ready-nodes.js'), import('../../kube/api.js')]);
    // The pod's name is its hostname: one candidate per replica.
    const readyNodes = await startReadyNodes({ api: new KubeApi(loadKubeConfig()), logger, namespace: values['lease-namespace'], identity: os.hostname() });
    stopReadyNodes = () => readyNodes.stop();
  }
  logger.info({ signal: await stopSignal() }, 'shutting down');
  await stopReadyNodes();
  await server.close();
  await stopCatalog();
  return 0;
}
