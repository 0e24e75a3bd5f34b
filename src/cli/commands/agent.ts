/**
 * `kubevirt-spdk agent`: the node agent's composition root. Its config is the agent's flags
 * (src/agent/config.ts) plus cluster mode's; from it the root takes the state dir lock, makes
 * the storage backend and the agent's options once, and runs either mode: standalone
 * (src/agent/standalone.ts) or cluster (src/kube/run.ts, loaded only then).
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { AgentFlagsSchema, agentOptionsOf } from '../../agent/config.js';
import { runStandalone } from '../../agent/standalone.js';
import { StateDirLockedError, lockStateDir, type StateDirLock } from '../../agent/state-lock.js';
import type { QsdBackendOptions } from '../../backend/qsd/index.js';
import type { SpdkBackendOptions } from '../../backend/spdk/config.js';
import type { StorageBackend } from '../../backend/types.js';
import { DEFAULT_POD_RESOURCES_SOCKET } from '../../kube/kubelet-paths.js';
import { createLogger, type Logger } from '../../log.js';
import { defineCommand, duration, parseFlags, text, type Command } from '../../config.js';
import { stopSignal } from '../signals.js';

const MiB = 2 ** 20;
/** Cluster mode always serves /readyz (the DaemonSet's probe): here unless --metrics-port says. */
const DEFAULT_METRICS_PORT = 9470;

const AgentConfigSchema = AgentFlagsSchema.extend({
  metricsPort: AgentFlagsSchema.shape.metricsPort.describe(
    `Serve \`/metrics\` (Prometheus), \`/healthz\` and \`/readyz\` on this TCP port (0 = any free port). Cluster mode: default ${DEFAULT_METRICS_PORT}; standalone: no metrics server when absent.`,
  ),
  nodeAddress: text('IP').optional().describe('Cluster mode: the address this node exports migrating disks and its cached images (read-only, to the other nodes) on, port 4420 (NVMe-oF/TCP; NBD with the qsd backend). Without it, node-local disks cannot migrate away and no other node reads its images.'),
  kubeconfig: text('FILE').optional().describe('Cluster mode: kubeconfig file. In-cluster config when absent.'),
  podResourcesSocket: text('PATH').default(DEFAULT_POD_RESOURCES_SOCKET).describe('Cluster mode: the kubelet PodResources API socket, used to map launcher pods to slots.'),
  seedWait: duration()
    .default('5s')
    .describe(
      'Cluster mode, lazy images from peers: when several nodes need an image (from an http(s) origin) that no node holds, one of them (the seed, the same for all: a rendezvous hash of the image and node names) reads the origin and the others read its golden. A node announces the image in its NodeImageCache (phase `wanted`) and waits this long for the seed to export it, then gives up on that seed (once more for the next seed), then reads the origin itself. The seed waits `--seed-settle` for the others\' announcements first. `0s`: no seeding, every node without a peer reads the origin at once. Needs `--node-address`: a node that cannot export neither seeds nor waits.',
    ),
  seedSettle: duration()
    .default('1s')
    .describe(
      'Cluster mode, with `--seed-wait`: how long the seed waits after announcing an image before it reads the origin, so that the announcements of nodes starting at the same moment reach it (the watch latency of NodeImageCaches). It delays the first disk of an image nobody holds by this much, even on a node that turns out to be alone; too short, and two nodes may both read the origin (twice, not once per node). Must be shorter than `--seed-wait`.',
    ),
})
  // The rules between flags; each message names the flag(s).
  .superRefine((c, ctx) => {
    const problem = (key: string | undefined, message: string): void => ctx.addIssue({ code: z.ZodIssueCode.custom, path: key ? [key] : [], message });
    if (c.standalone) {
      if (c.vmis === undefined) problem('vmis', 'is required');
      if (c.images === undefined) problem('images', 'is required');
      if (c.kubeconfig !== undefined) problem('kubeconfig', 'only applies in cluster mode (without --standalone)');
    } else {
      if (c.node === undefined) problem('node', 'is required in cluster mode (or set NODE_NAME)');
      if (c.once) problem('once', 'only applies with --standalone');
      if (c.vmis !== undefined || c.images !== undefined) problem(undefined, '--vmis, --images: only apply with --standalone (cluster mode watches the API server)');
    }
    if (c.lvstoreBlockSize !== undefined && c.lvstoreBdev !== undefined) problem('lvstoreBlockSize', 'only applies to the aio file made without --lvstore-bdev (a device has its own block size)');
    if (c.bdevDir !== undefined && c.backend !== 'qsd') problem('bdevDir', 'only applies with --backend qsd (spdk bdevs are named in spdk_tgt)');
    if (c.seedWait > 0 && c.seedSettle >= c.seedWait) problem('seedSettle', 'must be shorter than --seed-wait');
    if (c.nbdPskFile !== undefined && c.backend !== 'qsd') problem('nbdPskFile', 'only applies with --backend qsd (NBD is the transport of the qsd backend)');
  })
  .transform((c) => ({
    ...c,
    ...(c.bdevDir !== undefined ? { bdevDir: path.resolve(c.bdevDir) } : {}),
    ...(c.metricsPort === undefined && !c.standalone ? { metricsPort: DEFAULT_METRICS_PORT } : {}),
  }));
export type AgentConfig = z.output<typeof AgentConfigSchema>;

const agentConfig = defineCommand({
  name: 'agent',
  schema: AgentConfigSchema,
  // NODE_NAME and NODE_IP come from the DaemonSet's downward API; a standalone agent ignores NODE_NAME.
  flags: { node: { env: 'NODE_NAME', envUnless: 'standalone' }, nodeAddress: { env: 'NODE_IP' } },
  synopsis: [
    '--standalone --vmis DIR --images FILE --vhost-dir DIR --state-dir DIR [--once] [flags]',
    "--node NAME --vhost-dir DIR --state-dir DIR [flags]   (cluster mode: watches the node's VMIs, launcher pods and CachedImages)",
  ],
});

/** argv (and NODE_NAME, NODE_IP) -> the agent's config; throws FlagError naming each bad flag. */
export function parseAgentArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): AgentConfig {
  return parseFlags(agentConfig, argv, env);
}

/**
 * The storage backend's options from the config (pure, so a test can see what the flags pass
 * through). The node name goes to spdk: lazy sources (peers' image exports, migrating disks)
 * are attached with its host NQN, which the peers' exports admit.
 */
export function backendOptionsOf(c: AgentConfig):
  | { kind: 'spdk'; socketPath: string; options: Omit<SpdkBackendOptions, 'client' | 'logger'> }
  | { kind: 'qsd'; options: Omit<QsdBackendOptions, 'logger'> } {
  const vhostDir = path.resolve(c.vhostDir);
  const stateDir = path.resolve(c.stateDir);
  if (c.backend === 'spdk') {
    return {
      kind: 'spdk',
      socketPath: c.spdkSocket,
      options: {
        vhostDir,
        stateDir: path.join(stateDir, 'spdk'),
        ...(c.node !== undefined ? { nodeName: c.node } : {}),
        lazyLocal: c.lazyImages,
        lvstore: {
          baseBdev: c.lvstoreBdev
            ? { kind: 'existing', name: c.lvstoreBdev }
            : // A sparse file in the state dir: fine for development and tests.
              // Its block size is recorded when the file is made, so a restart re-creates it exactly.
              {
                kind: 'aio',
                filename: path.join(stateDir, 'lvstore.img'),
                sizeMiB: Math.ceil(c.lvstoreSize / MiB),
                ...(c.lvstoreBlockSize !== undefined ? { blockSize: c.lvstoreBlockSize } : {}),
              },
        },
      },
    };
  }
  return {
    kind: 'qsd',
    options: {
      stateDir: path.join(stateDir, 'qsd'),
      vhostDir,
      managed: true,
      lazyImages: c.lazyImages,
      // Standalone: no other node would use a profile, so none is recorded (nor hydration paused for it).
      bootOrder: { record: c.bootRecordWindow > 0 && !c.standalone, capMs: c.bootRecordWindow },
      ...(c.bdevDir ? { bdevDir: c.bdevDir } : {}),
      ...(c.nbdPskFile !== undefined ? { nbdPsk: path.resolve(c.nbdPskFile) } : {}),
    },
  };
}

async function makeBackend(c: AgentConfig, logger: Logger): Promise<StorageBackend> {
  const b = backendOptionsOf(c);
  if (b.kind === 'spdk') {
    const { SpdkRpcClient } = await import('../../spdk/client.js');
    const { SpdkBackend } = await import('../../backend/spdk/index.js');
    // Redial often (a unix connect is cheap): after an spdk_tgt restart every ms before the
    // agent notices is guest I/O paused; the client's default backoff grows to 5 s.
    const client = new SpdkRpcClient({ socketPath: b.socketPath, logger, reconnect: { initialDelayMs: 20, maxDelayMs: 250 } });
    return new SpdkBackend({ ...b.options, client, logger });
  }
  const { QsdBackend } = await import('../../backend/qsd/index.js');
  return new QsdBackend({ ...b.options, logger });
}

async function run(c: AgentConfig): Promise<number> {
  // Every line carries the node, so logs from a DaemonSet can be told apart.
  const logger = c.node ? createLogger('agent').child({ node: c.node }) : createLogger('agent');
  await mkdir(c.stateDir, { recursive: true });
  await mkdir(c.vhostDir, { recursive: true });
  // Before anything touches the state: a second agent here would delete the first one's disks.
  let lock: StateDirLock;
  try {
    lock = await lockStateDir(c.stateDir);
  } catch (e) {
    if (!(e instanceof StateDirLockedError)) throw e;
    logger.error({ event: 'state-dir-locked', stateDir: e.stateDir }, e.message);
    process.stderr.write(`kubevirt-spdk agent: ${e.message}\n`);
    return 1;
  }
  lock.onLost((reason) => {
    logger.fatal({ event: 'state-dir-lock-lost', reason }, 'lost the state dir lock; exiting');
    process.exit(1);
  });
  const backend = await makeBackend(c, logger);
  // From here on the backend is closed on every path: an open RPC socket would keep the
  // process alive after a failure (it used to hang forever instead of exiting).
  try {
    const agent = agentOptionsOf(c, backend);
    if (!c.standalone) {
      const { runClusterAgent } = await import('../../kube/run.js');
      return await runClusterAgent({
        node: c.node ?? '',
        ...(c.kubeconfig ? { kubeconfig: c.kubeconfig } : {}),
        ...(c.nodeAddress ? { nodeAddress: c.nodeAddress } : {}),
        podResourcesSocket: c.podResourcesSocket,
        seedWaitMs: c.seedWait,
        seedSettleMs: c.seedSettle,
        metricsPort: c.metricsPort ?? 0,
        agent,
        logger,
      });
    }
    return await runStandalone({
      agent,
      vmisDir: c.vmis ?? '',
      imagesFile: c.images ?? '',
      logger,
      ...(c.node ? { node: c.node } : {}),
      ...(c.once ? { once: { timeoutMs: c.timeout } } : {}),
      ...(c.metricsPort !== undefined ? { metricsPort: c.metricsPort } : {}),
      // --once keeps Node's default signal handling (a signal ends it); the daemon stops cleanly.
      stop: c.once ? new Promise<NodeJS.Signals>(() => undefined) : stopSignal(),
      say: (line) => process.stderr.write(`kubevirt-spdk agent: ${line}\n`),
    });
  } finally {
    await backend.close().catch((e: unknown) => logger.warn({ event: 'backend-close-failed', error: (e as Error).message }, 'closing the backend failed'));
    await lock.release();
  }
}

export const command: Command<typeof AgentConfigSchema> = { ...agentConfig, run };
