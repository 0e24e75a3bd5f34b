/**
 * Standalone mode of the node agent: VMI YAML files in a directory and a CachedImage file are
 * the desired state (no cluster). `StandaloneSource` reads them; `runStandalone` runs the agent
 * on them, once (`--once`: converge and report) or as a daemon that follows the files.
 */
import { watch, type FSWatcher } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { parseCachedImages } from '../api/cachedimage.js';
import { ValidationError } from '../api/errors.js';
import { parseVmi, parseVmiYaml, slotOf, type Vmi } from '../api/vmi.js';
import { FILE_YAML_LIMITS, checkYamlLimits } from '../api/yaml.js';
import type { ImageSpec, StorageBackend } from '../backend/types.js';
import type { Logger } from '../log.js';
import { startStatusServer } from '../metrics/server.js';
import { NodeAgent, type NodeAgentOptions, type ReconcileReport } from './agent.js';
import { buildDesired, imageSpecOf, type DesiredState, type ViewVmi } from './desired.js';
import { describeError } from './executor.js';

/**
 * The standalone desired state: VMI YAML files in a directory and a CachedImage file. A file
 * that stops parsing keeps its VMI alive (its last good form, or at least its name), so that
 * a typo never deletes a VM's disks; it is reported with the file name and field.
 */
export class StandaloneSource {
  private readonly lastGood = new Map<string, Vmi>();
  private lastImages: ImageSpec[] = [];

  constructor(
    readonly vmisDir: string,
    readonly imagesFile: string,
  ) {}

  async load(slotHolder?: (slot: string) => string | undefined): Promise<DesiredState> {
    const problems: string[] = [];
    let images = this.lastImages;
    try {
      images = parseCachedImages(await readFile(this.imagesFile, 'utf8'), path.basename(this.imagesFile)).map(imageSpecOf);
      this.lastImages = images;
    } catch (e) {
      problems.push(e instanceof ValidationError ? e.problems.join('; ') : `${path.basename(this.imagesFile)}: ${(e as Error).message}`);
    }
    const names = (await readdir(this.vmisDir)).filter((f) => /\.(ya?ml|json)$/.test(f) && !f.startsWith('.')).sort();
    const inputs: ViewVmi[] = [];
    const seen = new Set<string>();
    for (const f of names) {
      seen.add(f);
      let text: string;
      try {
        text = await readFile(path.join(this.vmisDir, f), 'utf8');
      } catch (e) {
        // Removed between readdir and read: it is gone.
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw e;
      }
      try {
        const vmi = parseVmiYaml(text, f);
        this.lastGood.set(f, vmi);
        inputs.push(standaloneVmi(f, vmi));
      } catch (e) {
        const msgs = e instanceof ValidationError ? e.problems : [`${f}: ${(e as Error).message}`];
        const known = this.lastGood.get(f) ?? identityOnly(text);
        if (known) inputs.push(standaloneVmi(f, known, msgs));
        else problems.push(...msgs);
      }
    }
    for (const f of this.lastGood.keys()) if (!seen.has(f)) this.lastGood.delete(f);
    return buildDesired({ vmis: inputs, images, problems }, slotHolder ? { slotHolder } : {});
  }
}

/**
 * A VMI file as the node view takes it: in standalone mode its `kubevirt-spdk.io/slot`
 * annotation stands in for the device plugin, read here at the edge (a bad one is a problem
 * of that VMI).
 */
export function standaloneVmi(origin: string, vmi: Vmi, problems: string[] = []): ViewVmi {
  let slot: string | undefined;
  const all = [...problems];
  try {
    slot = slotOf(vmi);
  } catch (e) {
    all.push(...(e instanceof ValidationError ? e.problems : [String(e)]));
  }
  return { origin, vmi, ...(slot !== undefined ? { slot } : {}), ...(all.length ? { problems: all } : {}) };
}

/** Name, namespace and uid of a VMI whose file does not validate, if they can be read at all. */
function identityOnly(text: string): Vmi | undefined {
  try {
    // Best effort on a file already refused: its YAML warnings are in the refusal, not printed again.
    // The limits first: a file refused for its depth must not reach the composer here either.
    checkYamlLimits(text, 'vmi', FILE_YAML_LIMITS);
    const doc = parseYaml(text, { logLevel: 'error' }) as { metadata?: { name?: unknown; namespace?: unknown; uid?: unknown } } | null;
    const m = doc?.metadata;
    if (!m || typeof m.name !== 'string') return undefined;
    return parseVmi({
      metadata: { name: m.name, ...(typeof m.namespace === 'string' ? { namespace: m.namespace } : {}), ...(typeof m.uid === 'string' ? { uid: m.uid } : {}) },
    });
  } catch {
    return undefined;
  }
}

export interface StandaloneRunOptions {
  /** The NodeAgent's options as built from the config (agentOptionsOf). */
  agent: Omit<NodeAgentOptions, 'onVmiStatus' | 'node' | 'logger'>;
  vmisDir: string;
  imagesFile: string;
  node?: string;
  logger: Logger;
  /** Converge, report and return instead of running until `stop`. */
  once?: { timeoutMs: number };
  /** Serve /metrics, /healthz, /readyz here (daemon only). */
  metricsPort?: number;
  /** Resolves when the daemon should stop (a signal). */
  stop: Promise<NodeJS.Signals>;
  /** One line for the person who started the agent (stderr). */
  say: (line: string) => void;
}

/** Exit code: 0 when done (or, with `once`, every disk Ready), 1 otherwise. The caller closes the backend. */
export async function runStandalone(o: StandaloneRunOptions): Promise<number> {
  const { logger, agent: opts } = o;
  const agent = new NodeAgent({ ...opts, logger, ...(o.node ? { node: o.node } : {}) });
  await agent.init();
  const source = new StandaloneSource(o.vmisDir, o.imagesFile);
  const load = async (): Promise<void> => {
    const desired = await source.load(agent.slotHolder);
    for (const p of desired.problems) logger.error({ event: 'bad-input', problem: p }, 'input file rejected');
    for (const v of desired.vmis) for (const p of v.problems) logger.error({ event: 'bad-input', vmi: v.ref, file: v.origin, problem: p }, 'VMI rejected');
    agent.setDesired(desired);
  };
  const startFailure = await startBackend(opts.backend, o.once?.timeoutMs, o.stop);
  if (startFailure !== undefined) {
    logger.error({ event: 'backend-start-failed', backend: opts.backend.kind, error: startFailure }, 'storage backend failed to start');
    o.say(`the ${opts.backend.kind} backend failed to start: ${startFailure}`);
    return 1;
  }
  if (o.once) {
    try {
      await load();
      const deadline = Date.now() + o.once.timeoutMs;
      let r = await agent.converge('once');
      while (!(r.converged && r.settled) && Date.now() < deadline) {
        await new Promise((res) => setTimeout(res, 200));
        r = await agent.converge('once');
      }
      const ok = allReady(r);
      o.say(`${ok ? 'all disks Ready' : 'not every disk is Ready'}\n${summary(r)}`);
      return ok ? 0 : 1;
    } finally {
      // Background imports (a download past the deadline) are aborted, not waited out.
      await agent.stop();
    }
  }
  return await daemon(o, agent, load);
}

async function daemon(o: StandaloneRunOptions, agent: NodeAgent, load: () => Promise<void>): Promise<number> {
  const { logger } = o;
  agent.start();
  const statusServer =
    o.metricsPort === undefined
      ? undefined
      : await startStatusServer({
          port: o.metricsPort,
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
  const imagesName = path.basename(o.imagesFile);
  const watchers: FSWatcher[] = [
    watch(o.vmisDir, changed),
    watch(path.dirname(path.resolve(o.imagesFile)), (_event, name) => {
      if (name === null || name === imagesName || name.startsWith('..')) changed();
    }),
  ];
  await load();
  await agent.reconcile('start');
  logger.info({ event: 'stopping', signal: await o.stop }, 'stopping');
  clearTimeout(debounce);
  for (const w of watchers) w.close();
  await agent.stop();
  await statusServer?.close();
  return 0;
}

/** Starts the backend, bounded by `deadlineMs` when given, and by a stop signal; the failure in words. */
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

function summary(r: ReconcileReport): string {
  const lines = r.vmis.flatMap((v) => [
    ...v.problems.map((p) => `  ${v.vmi.namespace}/${v.vmi.name} (${v.origin}): ${p}`),
    ...v.disks.map((d) => `  ${v.vmi.namespace}/${v.vmi.name} ${d.name}: ${d.phase}${d.message ? ` (${d.message})` : ''}${d.socket ? ` ${d.socket}` : ''}`),
  ]);
  return [...lines, ...r.problems.map((p) => `  ${p}`)].join('\n');
}

const allReady = (r: ReconcileReport): boolean =>
  r.backendOk && r.problems.length === 0 && r.vmis.every((v) => v.problems.length === 0 && v.disks.every((d) => d.phase === 'Ready'));
