import { watch, type FSWatcher } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ValidationError } from '../../api/errors.js';
import { LIMITS } from '../../api/limits.js';
import { parseDuration, parseQuantity } from '../../api/quantity.js';
import type { StorageBackend } from '../../backend/types.js';
import { describeError } from '../../agent/executor.js';
import { createLogger, type Logger } from '../../log.js';
import { NodeAgent, type ReconcileReport } from '../../agent/agent.js';
import { StandaloneSource } from '../../agent/standalone.js';
import { StateDirLockedError, lockStateDir, type StateDirLock } from '../../agent/state-lock.js';
import { startStatusServer } from '../../metrics/server.js';
import { stopSignal } from '../signals.js';
import { DEFAULT_POD_RESOURCES_SOCKET } from '../../kube/kubelet-paths.js';

const DEFAULT_METRICS_PORT = 9470;

const USAGE = `usage: kubevirt-spdk agent --standalone --vmis DIR --images FILE --backend spdk|qsd
         --vhost-dir DIR --state-dir DIR [--once] [--timeout 120s]
         [--spdk-socket PATH] [--lvstore-bdev NAME | --lvstore-size 64Gi [--lvstore-block-size 512|4096]]
         [--socket-owner 107:107] [--socket-mode 0660] [--orphan-grace 5m] [--resync 30s]
         [--cache-max-size SIZE] [--cache-max-count N] [--node NAME]
         [--bdev-dir DIR] (qsd: \`bdev: x\` volumes serve DIR/x; none without it)
         [--metrics-port PORT] (serves /metrics, /healthz, /readyz; 0 = any free port)
       kubevirt-spdk agent [--node NAME (default $NODE_NAME)] --backend spdk|qsd
         --vhost-dir DIR --state-dir DIR [--kubeconfig FILE] [--metrics-port 9470]
         [--pod-resources-socket PATH] [--node-address IP (default $NODE_IP)] [and the flags above that are not standalone-only]
         (cluster mode: watches the node's VMIs, launcher pods and CachedImages)
`;

const MiB = 2 ** 20;

interface AgentArgs {
  /** Standalone reads files; otherwise (cluster mode) the agent watches the API server. */
  standalone: boolean;
  vmis: string;
  images: string;
  backend: 'spdk' | 'qsd';
  vhostDir: string;
  stateDir: string;
  once: boolean;
  timeoutMs: number;
  spdkSocket: string;
  lvstoreBdev?: string;
  lvstoreBytes: number;
  /** Block size of the development aio base; unset: as recorded, else 512. */
  lvstoreBlockSize?: 512 | 4096;
  owner: { uid: number; gid: number };
  mode: number;
  orphanGraceMs: number;
  resyncMs: number;
  cacheMaxBytes?: number;
  cacheMaxCount?: number;
  node?: string;
  /** This node's IP for migration exports (cluster mode; default NODE_IP). */
  nodeAddress?: string;
  metricsPort?: number;
  kubeconfig?: string;
  podResourcesSocket: string;
  /** qsd: the directory `bdev:` volumes are resolved in. */
  bdevDir?: string;
}

/** Parses and validates flags; every problem names the flag and the rule. */
export function parseAgentArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): AgentArgs {
  const { values } = parseArgs({
    args: argv,
    options: {
      standalone: { type: 'boolean', default: false },
      vmis: { type: 'string' },
      images: { type: 'string' },
      backend: { type: 'string', default: 'spdk' },
      'vhost-dir': { type: 'string' },
      'state-dir': { type: 'string' },
      once: { type: 'boolean', default: false },
      timeout: { type: 'string', default: '120s' },
      'spdk-socket': { type: 'string', default: '/var/tmp/spdk.sock' },
      'lvstore-bdev': { type: 'string' },
      'lvstore-size': { type: 'string', default: '64Gi' },
      'lvstore-block-size': { type: 'string' },
      'socket-owner': { type: 'string', default: '107:107' },
      'socket-mode': { type: 'string', default: '0660' },
      'orphan-grace': { type: 'string', default: '5m' },
      resync: { type: 'string', default: '30s' },
      'cache-max-size': { type: 'string' },
      'cache-max-count': { type: 'string' },
      node: { type: 'string' },
      'node-address': { type: 'string' },
      'metrics-port': { type: 'string' },
      kubeconfig: { type: 'string' },
      'pod-resources-socket': { type: 'string', default: DEFAULT_POD_RESOURCES_SOCKET },
      'bdev-dir': { type: 'string' },
    },
    strict: true,
  });
  const problems: string[] = [];
  const need = (name: string, v: string | undefined): string => {
    if (v === undefined || v === '') problems.push(`--${name}: is required`);
    return v ?? '';
  };
  const standalone = values.standalone;
  const node = values.node ?? (standalone ? undefined : env.NODE_NAME);
  if (!standalone) {
    if (!node) problems.push('--node: is required in cluster mode (or set NODE_NAME)');
    if (values.once) problems.push('--once: only applies with --standalone');
    if (values.vmis !== undefined || values.images !== undefined) problems.push('--vmis, --images: only apply with --standalone (cluster mode watches the API server)');
  } else if (values.kubeconfig !== undefined) problems.push('--kubeconfig: only applies in cluster mode (without --standalone)');
  const duration = (name: string, v: string): number => {
    const ms = parseDuration(v);
    if (ms === undefined || ms < 0) problems.push(`--${name}: ${v} is not a duration (e.g. 30s, 5m)`);
    else if (ms > LIMITS.maxDurationMs) problems.push(`--${name}: ${v} is longer than the limit of ${LIMITS.maxDurationMs} ms (about 24 days)`);
    return ms ?? 0;
  };
  const backend = values.backend;
  if (backend !== 'spdk' && backend !== 'qsd') problems.push(`--backend: "${backend}" must be spdk or qsd`);
  const owner = /^(\d+):(\d+)$/.exec(values['socket-owner']);
  if (!owner) problems.push(`--socket-owner: "${values['socket-owner']}" must be UID:GID (numbers)`);
  const mode = /^0?[0-7]{3}$/.test(values['socket-mode']) ? parseInt(values['socket-mode'], 8) : NaN;
  if (Number.isNaN(mode)) problems.push(`--socket-mode: "${values['socket-mode']}" must be an octal mode like 0660`);
  const lvstoreBytes = parseQuantity(values['lvstore-size']);
  if (lvstoreBytes === undefined || lvstoreBytes < 64 * MiB) problems.push(`--lvstore-size: "${values['lvstore-size']}" must be a quantity of at least 64Mi`);
  const blockSizeText = values['lvstore-block-size'];
  const lvstoreBlockSize = blockSizeText === undefined ? undefined : Number(blockSizeText);
  if (blockSizeText !== undefined) {
    if (lvstoreBlockSize !== 512 && lvstoreBlockSize !== 4096) problems.push(`--lvstore-block-size: "${blockSizeText}" must be 512 or 4096`);
    if (values['lvstore-bdev']) problems.push('--lvstore-block-size: only applies to the aio file made without --lvstore-bdev (a device has its own block size)');
  }
  const cacheMaxBytes = values['cache-max-size'] === undefined ? undefined : parseQuantity(values['cache-max-size']);
  if (values['cache-max-size'] !== undefined && cacheMaxBytes === undefined) problems.push(`--cache-max-size: "${values['cache-max-size']}" is not a quantity`);
  const cacheMaxCount = values['cache-max-count'] === undefined ? undefined : Number(values['cache-max-count']);
  if (cacheMaxCount !== undefined && !(Number.isInteger(cacheMaxCount) && cacheMaxCount >= 0)) problems.push(`--cache-max-count: "${values['cache-max-count']}" must be a whole number`);
  const metricsPort = values['metrics-port'] === undefined ? undefined : Number(values['metrics-port']);
  if (metricsPort !== undefined && !(Number.isInteger(metricsPort) && metricsPort >= 0 && metricsPort < 65536)) {
    problems.push(`--metrics-port: "${values['metrics-port']}" is not a TCP port (0-65535)`);
  }
  const args: AgentArgs = {
    standalone,
    vmis: standalone ? need('vmis', values.vmis) : '',
    images: standalone ? need('images', values.images) : '',
    backend: backend as 'spdk' | 'qsd',
    vhostDir: need('vhost-dir', values['vhost-dir']),
    stateDir: need('state-dir', values['state-dir']),
    once: values.once,
    timeoutMs: duration('timeout', values.timeout),
    spdkSocket: values['spdk-socket'],
    ...(values['lvstore-bdev'] ? { lvstoreBdev: values['lvstore-bdev'] } : {}),
    lvstoreBytes: lvstoreBytes ?? 0,
    ...(lvstoreBlockSize === 512 || lvstoreBlockSize === 4096 ? { lvstoreBlockSize } : {}),
    owner: { uid: Number(owner?.[1] ?? 0), gid: Number(owner?.[2] ?? 0) },
    mode,
    orphanGraceMs: duration('orphan-grace', values['orphan-grace']),
    resyncMs: duration('resync', values.resync),
    ...(cacheMaxBytes !== undefined ? { cacheMaxBytes } : {}),
    ...(cacheMaxCount !== undefined ? { cacheMaxCount } : {}),
    ...(node ? { node } : {}),
    ...(values['node-address'] ? { nodeAddress: values['node-address'] } : {}),
    // Cluster mode always serves /readyz (the DaemonSet's probe) on the default port.
    ...(metricsPort !== undefined ? { metricsPort } : standalone ? {} : { metricsPort: DEFAULT_METRICS_PORT }),
    ...(values.kubeconfig ? { kubeconfig: values.kubeconfig } : {}),
    podResourcesSocket: values['pod-resources-socket'],
    ...(values['bdev-dir'] ? { bdevDir: path.resolve(values['bdev-dir']) } : {}),
  };
  if (values['bdev-dir'] !== undefined && backend !== 'qsd') problems.push('--bdev-dir: only applies with --backend qsd (spdk bdevs are named in spdk_tgt)');
  if (problems.length) throw new ValidationError(problems);
  return args;
}

async function makeBackend(a: AgentArgs, logger: Logger): Promise<StorageBackend> {
  const vhostDir = path.resolve(a.vhostDir);
  const stateDir = path.resolve(a.stateDir);
  if (a.backend === 'spdk') {
    const { SpdkRpcClient } = await import('../../spdk/client.js');
    const { SpdkBackend } = await import('../../backend/spdk/index.js');
    // Redial often (a unix connect is cheap): after an spdk_tgt restart every ms before the
    // agent notices is guest I/O paused; the client's default backoff grows to 5 s.
    const client = new SpdkRpcClient({ socketPath: a.spdkSocket, logger, reconnect: { initialDelayMs: 20, maxDelayMs: 250 } });
    return new SpdkBackend({
      client,
      logger,
      vhostDir,
      stateDir: path.join(stateDir, 'spdk'),
      lvstore: {
        baseBdev: a.lvstoreBdev
          ? { kind: 'existing', name: a.lvstoreBdev }
          : // A sparse file in the state dir: fine for development and tests.
            // Its block size is recorded when the file is made, so a restart re-creates it exactly.
            {
              kind: 'aio',
              filename: path.join(stateDir, 'lvstore.img'),
              sizeMiB: Math.ceil(a.lvstoreBytes / MiB),
              ...(a.lvstoreBlockSize !== undefined ? { blockSize: a.lvstoreBlockSize } : {}),
            },
      },
    });
  }
  const { QsdBackend } = await import('../../backend/qsd/index.js');
  return new QsdBackend({ stateDir: path.join(stateDir, 'qsd'), vhostDir, managed: true, logger, ...(a.bdevDir ? { bdevDir: a.bdevDir } : {}) });
}

function summary(r: ReconcileReport): string {
  const lines = r.vmis.flatMap((v) => [
    ...v.problems.map((p) => `  ${v.vmi.namespace}/${v.vmi.name} (${v.origin}): ${p}`),
    ...v.disks.map((d) => `  ${v.vmi.namespace}/${v.vmi.name} ${d.name}: ${d.phase}${d.message ? ` (${d.message})` : ''}${d.socket ? ` ${d.socket}` : ''}`),
  ]);
  return [...lines, ...r.problems.map((p) => `  ${p}`)].join('\n');
}

const allReady = (r: ReconcileReport): boolean =>
  r.backendOk && r.problems.length === 0 && r.vmis.every((v) => v.problems.length === 0 && v.disks.every((d) => d.phase === 'Ready'));

export async function run(argv: string[]): Promise<number> {
  if (argv.includes('-h') || argv.includes('--help')) {
    process.stdout.write(USAGE);
    return 0;
  }
  let a: AgentArgs;
  try {
    a = parseAgentArgs(argv);
  } catch (e) {
    if (e instanceof ValidationError) throw e;
    process.stderr.write(`kubevirt-spdk agent: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  // Every line carries the node, so logs from a DaemonSet can be told apart.
  const logger = a.node ? createLogger('agent').child({ node: a.node }) : createLogger('agent');
  await mkdir(a.stateDir, { recursive: true });
  await mkdir(a.vhostDir, { recursive: true });
  // Before anything touches the state: a second agent here would delete the first one's disks.
  let lock: StateDirLock;
  try {
    lock = await lockStateDir(a.stateDir);
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
  const backend = await makeBackend(a, logger);
  // From here on the backend is closed on every path: an open RPC socket would keep the
  // process alive after a failure (it used to hang forever instead of exiting).
  try {
    return await runWithBackend(a, logger, backend);
  } finally {
    await backend.close().catch((e: unknown) => logger.warn({ event: 'backend-close-failed', error: (e as Error).message }, 'closing the backend failed'));
    await lock.release();
  }
}

/** Starts the backend, bounded by `deadlineMs` when given, and by a stop signal. */
async function startBackend(backend: StorageBackend, deadlineMs: number | undefined, stop: Promise<NodeJS.Signals>): Promise<string | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const started = backend.start().then(
    () => undefined,
    (e: unknown) => describeError(e),
  );
  const timedOut = deadlineMs === undefined ? new Promise<never>(() => undefined) : new Promise<string>((r) => (timer = setTimeout(() => r(`not ready within ${deadlineMs} ms (is spdk_tgt running?)`), deadlineMs)));
  const stopped = stop.then((sig) => `stopped by ${sig} before it was ready`);
  try {
    return await Promise.race([started, timedOut, stopped]);
  } finally {
    clearTimeout(timer);
  }
}

async function runWithBackend(a: AgentArgs, logger: Logger, backend: StorageBackend): Promise<number> {
  const agentOptions = {
    backend,
    stateDir: path.resolve(a.stateDir),
    socket: { ...a.owner, mode: a.mode },
    orphanGraceMs: a.orphanGraceMs,
    resyncMs: a.resyncMs,
    cache: { ...(a.cacheMaxBytes !== undefined ? { maxSizeBytes: a.cacheMaxBytes } : {}), ...(a.cacheMaxCount !== undefined ? { maxCount: a.cacheMaxCount } : {}) },
  };
  if (!a.standalone) {
    const { runClusterAgent } = await import('../../kube/run.js');
    return await runClusterAgent({
        node: a.node ?? '',
        ...(a.kubeconfig ? { kubeconfig: a.kubeconfig } : {}),
        ...(a.nodeAddress ? { nodeAddress: a.nodeAddress } : {}),
        podResourcesSocket: a.podResourcesSocket,
        metricsPort: a.metricsPort ?? DEFAULT_METRICS_PORT,
        agent: agentOptions,
        logger,
      });
  }
  const agent = new NodeAgent({
    backend,
    stateDir: path.resolve(a.stateDir),
    logger,
    socket: { ...a.owner, mode: a.mode },
    orphanGraceMs: a.orphanGraceMs,
    resyncMs: a.once ? 0 : a.resyncMs,
    cache: { ...(a.cacheMaxBytes !== undefined ? { maxSizeBytes: a.cacheMaxBytes } : {}), ...(a.cacheMaxCount !== undefined ? { maxCount: a.cacheMaxCount } : {}) },
    ...(a.node ? { node: a.node } : {}),
  });
  await agent.init();
  const source = new StandaloneSource(a.vmis, a.images);
  const load = async (): Promise<void> => {
    const desired = await source.load(agent.slotHolder);
    for (const p of desired.problems) logger.error({ event: 'bad-input', problem: p }, 'input file rejected');
    for (const v of desired.vmis) for (const p of v.problems) logger.error({ event: 'bad-input', vmi: v.ref, file: v.origin, problem: p }, 'VMI rejected');
    agent.setDesired(desired);
  };
  // --once keeps Node's default signal handling (a signal ends it); the daemon stops cleanly.
  const stop = a.once ? new Promise<NodeJS.Signals>(() => undefined) : stopSignal();
  const startFailure = await startBackend(backend, a.once ? a.timeoutMs : undefined, stop);
  if (startFailure !== undefined) {
    logger.error({ event: 'backend-start-failed', backend: backend.kind, error: startFailure }, 'storage backend failed to start');
    process.stderr.write(`kubevirt-spdk agent: the ${backend.kind} backend failed to start: ${startFailure}\n`);
    return 1;
  }

  if (a.once) {
    try {
      await load();
      const deadline = Date.now() + a.timeoutMs;
      let r = await agent.converge('once');
      while (!(r.converged && r.settled) && Date.now() < deadline) {
        await new Promise((res) => setTimeout(res, 200));
        r = await agent.converge('once');
      }
      const ok = allReady(r);
      process.stderr.write(`kubevirt-spdk agent: ${ok ? 'all disks Ready' : 'not every disk is Ready'}\n${summary(r)}\n`);
      return ok ? 0 : 1;
    } finally {
      // Background imports (a download past the deadline) are aborted, not waited out.
      await agent.stop();
    }
  }

  agent.start();
  const statusServer =
    a.metricsPort === undefined
      ? undefined
      : await startStatusServer({
          port: a.metricsPort,
          registry: agent.metrics.registry,
          ready: () => (agent.lastReport === undefined ? 'first reconcile not done' : agent.lastReport.backendOk || 'storage backend unreachable'),
        });
  if (statusServer) logger.info({ event: 'metrics-listening', port: statusServer.port }, 'serving /metrics, /healthz, /readyz');
  let debounce: NodeJS.Timeout | undefined;
  const changed = (): void => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      load()
        .then(() => agent.reconcile('desired-changed'))
        .catch((e: unknown) => logger.error({ event: 'reconcile-failed', error: (e as Error).message }, 'reconcile failed'));
    }, 100);
  };
  // The images file is watched through its directory (editors and ConfigMaps replace files),
  // but only its own name counts: other files there must not trigger reloads.
  const imagesName = path.basename(a.images);
  const watchers: FSWatcher[] = [
    watch(a.vmis, changed),
    watch(path.dirname(path.resolve(a.images)), (_event, name) => {
      if (name === null || name === imagesName || name.startsWith('..')) changed();
    }),
  ];
  await load();
  await agent.reconcile('start');
  logger.info({ event: 'stopping', signal: await stop }, 'stopping');
  clearTimeout(debounce);
  for (const w of watchers) w.close();
  await agent.stop();
  await statusServer?.close();
  return 0;
}
