/**
 * A node under test for fault scenarios: the SPDK simulator (in process, on a real unix
 * socket), the real spdk backend and RPC client, and a NodeAgent on temp dirs. Every RPC goes
 * through a hook, so a scenario can kill spdk_tgt before or after any call, and the rig checks
 * the safety rules at the moment a destructive call is made (not only at the end).
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { NodeAgent, type NodeAgentOptions, type ReconcileReport } from '../../src/agent/agent.js';
import type { DesiredState } from '../../src/agent/desired.js';
import { Journal } from '../../src/agent/journal.js';
import { goldenImageName } from '../../src/contract/index.js';
import { SpdkBackend } from '../../src/backend/spdk/index.js';
import type { ImageSpec } from '../../src/backend/types.js';
import { SpdkSimulator, type ModelSnapshot } from '../../testing/spdk-sim/index.js';
import { SpdkRpcClient } from '../../src/spdk/client.js';
import { testSocket } from '../unit/agent/fixtures.js';

export const MiB = 1024 * 1024;

export type CallHook = (method: string, phase: 'before' | 'after', n: number, params: Record<string, unknown> | undefined) => Promise<void> | void;

export interface RigOptions {
  lvsMiB?: number;
  rpcTimeoutMs?: number;
  agent?: Partial<NodeAgentOptions>;
  fetchImage?: ConstructorParameters<typeof SpdkBackend>[0]['fetchImage'];
  fetchOptions?: ConstructorParameters<typeof SpdkBackend>[0]['fetchOptions'];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class SimRig {
  sim: SpdkSimulator | undefined;
  client!: SpdkRpcClient;
  backend!: SpdkBackend;
  agent!: NodeAgent;
  /** Safety rules broken at the moment of a call; a scenario fails if this is not empty. */
  readonly violations: string[] = [];
  readonly calls: string[] = [];
  /** Bdevs that were ever given to a controller (they may hold a guest's data). */
  private readonly served = new Set<string>();
  hook: CallHook | undefined;
  /** Desired state the live checks compare against (a VMI's disk is never deleted while it exists). */
  desired: DesiredState | undefined;
  private readonly agents: NodeAgent[] = [];
  private readonly backends: SpdkBackend[] = [];
  private restarting: Promise<void> | undefined;

  private constructor(
    readonly dir: string,
    readonly opts: RigOptions,
  ) {}

  readonly paths = {
    socket: (): string => path.join(this.dir, 'r.sock'),
    vhost: (): string => path.join(this.dir, 'v'),
    simState: (): string => path.join(this.dir, 'sim'),
    backendState: (): string => path.join(this.dir, 'be'),
    agentState: (): string => path.join(this.dir, 'ag'),
    lvs: (): string => path.join(this.dir, 'lvs.img'),
  };

  static async create(opts: RigOptions = {}): Promise<SimRig> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'fl-'));
    const rig = new SimRig(dir, opts);
    await mkdir(rig.paths.vhost(), { recursive: true });
    await rig.startSim();
    rig.client = new SpdkRpcClient({ socketPath: rig.paths.socket(), timeoutMs: opts.rpcTimeoutMs ?? 1_500, reconnect: { initialDelayMs: 5, maxDelayMs: 40 } });
    rig.wrapClient();
    rig.backend = rig.makeBackend();
    rig.backends.push(rig.backend);
    await rig.backend.start();
    rig.agent = await rig.newAgent();
    return rig;
  }

  private async startSim(): Promise<void> {
    const sim = new SpdkSimulator({ socketPath: this.paths.socket(), vhostDir: this.paths.vhost(), stateDir: this.paths.simState() });
    await sim.start();
    this.sim = sim;
  }

  /** spdk_tgt dies: RPC socket and every controller socket are gone, lvstore metadata stays on "disk". */
  async kill(): Promise<void> {
    const sim = this.sim;
    this.sim = undefined;
    await sim?.stop();
  }

  /** Kill, then restart after `delayMs` in the background (calls meanwhile wait or fail). */
  killAndRestart(delayMs: number): Promise<void> {
    this.restarting = (async () => {
      await this.kill();
      await sleep(delayMs);
      await this.startSim();
    })();
    return this.restarting;
  }

  async settled(): Promise<void> {
    await this.restarting;
  }

  snapshot(): ModelSnapshot {
    if (!this.sim) throw new Error('spdk simulator is not running');
    return this.sim.snapshot();
  }

  /**
   * The agent's process died and a new one starts: a new RPC client, backend and agent on the
   * same state dir (the old ones are abandoned, as a dead process's memory is).
   */
  async replaceProcess(): Promise<void> {
    // The "killed" agent's background imports die with its process (its round stays frozen).
    void this.agent.stop().catch(() => undefined);
    this.hook = undefined;
    const old = this.client;
    void old.close().catch(() => undefined);
    this.client = new SpdkRpcClient({ socketPath: this.paths.socket(), timeoutMs: this.opts.rpcTimeoutMs ?? 1_500, reconnect: { initialDelayMs: 5, maxDelayMs: 40 } });
    this.wrapClient();
    this.backend = this.makeBackend();
    this.backends.push(this.backend);
    await this.backend.start();
    this.agent = await this.newAgent();
  }

  private makeBackend(): SpdkBackend {
    const opts = this.opts;
    return new SpdkBackend({
      client: this.client,
      lvstore: { name: 'kvs', baseBdev: { kind: 'aio', filename: this.paths.lvs(), sizeMiB: opts.lvsMiB ?? 128, blockSize: 512 } },
      vhostDir: this.paths.vhost(),
      stateDir: this.paths.backendState(),
      inflateTimeoutMs: 2_000,
      ...(opts.fetchImage ? { fetchImage: opts.fetchImage } : {}),
      ...(opts.fetchOptions ? { fetchOptions: opts.fetchOptions } : {}),
    });
  }

  async newAgent(extra: Partial<NodeAgentOptions> = {}): Promise<NodeAgent> {
    const a = new NodeAgent({
      backend: this.backend,
      stateDir: this.paths.agentState(),
      socket: testSocket,
      orphanGraceMs: 0,
      resyncMs: 0,
      retry: { attempts: 3, baseMs: 1, maxMs: 5 },
      ...this.opts.agent,
      ...extra,
    });
    await a.init();
    this.agents.push(a);
    return a;
  }

  /** Reconciles until settled and converged, or gives up after `rounds` (bounded; never a timing assertion). */
  async converge(agent: NodeAgent, desired: DesiredState, rounds = 40): Promise<ReconcileReport> {
    this.desired = desired;
    agent.setDesired(desired);
    let last: ReconcileReport | undefined;
    for (let i = 0; i < rounds; i++) {
      last = await agent.converge('fault-test');
      // A disk Failed by a transient fault is retried by the next round: wait for Ready.
      const ready = last.vmis.every((v) => v.problems.length > 0 || v.disks.every((d) => d.phase === 'Ready'));
      if (last.converged && last.settled && last.backendOk && ready) return last;
      await sleep(20);
    }
    if (!last) throw new Error('no reconcile round ran');
    return last;
  }

  private wrapClient(): void {
    const client = this.client;
    const call = client.call.bind(client);
    let n = 0;
    client.call = async (method, params, opts) => {
      const k = ++n;
      this.calls.push(method);
      this.liveCheck(method, params);
      await this.hook?.(method, 'before', k, params);
      const result = await call(method, params, opts);
      await this.hook?.(method, 'after', k, params);
      return result;
    };
  }

  /** The safety rules SPDK does not enforce, checked right before a destructive call lands. */
  private liveCheck(method: string, params: Record<string, unknown> | undefined): void {
    if (!this.sim) return;
    const snap = this.sim.snapshot();
    const lvolOf = (name: unknown) => snap.lvols.find((l) => l.uuid === name || l.alias === name || l.name === name);
    if (method === 'bdev_lvol_delete') {
      const l = lvolOf(params?.name);
      if (!l) return;
      const servedBy = snap.controllers.filter((c) => c.bdev === l.uuid);
      if (servedBy.length) this.violations.push(`deleted lvol ${l.alias} while served by ${servedBy.map((c) => c.name).join(',')}`);
      const clones = snap.lvols.filter((c) => c.parent?.kind === 'snapshot' && c.parent.uuid === l.uuid);
      // The import deletes the clone of a fresh golden, never the golden: a golden with clones is the break.
      if (clones.length && l.name.startsWith('img-')) this.violations.push(`deleted golden ${l.alias} with clones ${clones.map((c) => c.name).join(',')}`);
      // A clone never served holds no data: the backend may roll it back (resize failed).
      const owner = this.desired?.vmis.flatMap((v) => v.disks).find((d) => d.id === l.name);
      if (owner && this.served.has(l.uuid)) this.violations.push(`deleted disk ${l.name} of VMI ${owner.vmi.namespace}/${owner.vmi.name}, which still exists`);
    }
    if (method === 'vhost_create_blk_controller') {
      const l = lvolOf(params?.dev_name);
      const bdev = l?.uuid ?? params?.dev_name;
      const other = snap.controllers.find((c) => c.bdev === bdev && c.name !== params?.ctrlr);
      if (other) this.violations.push(`second controller ${String(params?.ctrlr)} on bdev ${String(params?.dev_name)} already served by ${other.name}`);
      if (typeof bdev === 'string') this.served.add(bdev);
    }
  }

  async cleanup(): Promise<void> {
    this.hook = undefined;
    await this.restarting?.catch(() => undefined);
    // A "killed" agent has a round stuck in a frozen call: it never stops, do not wait for it.
    for (const a of this.agents) await Promise.race([a.stop().catch(() => undefined), sleep(20)]);
    // An abandoned backend may have an import stuck in a frozen call: do not wait for it.
    for (const b of this.backends) void b.close().catch(() => undefined);
    await this.client?.close().catch(() => undefined);
    await this.sim?.stop().catch(() => undefined);
    // An abandoned agent may still finish a journal write while the tree goes.
    await rm(this.dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 20 });
  }
}

/** A raw image on the host with recognisable content. */
export async function hostImage(dir: string, name: string, bytes = 3 * MiB + 512): Promise<ImageSpec> {
  const file = path.join(dir, `${name}.raw`);
  const data = Buffer.alloc(bytes, 0);
  for (let off = 0; off < bytes; off += 4096) data.write(`${name}@${off}`, off);
  await writeFile(file, data);
  return { name, format: 'raw', source: { hostPath: { path: file, sha256: createHash('sha256').update(data).digest('hex') } } };
}

export interface InvariantResult {
  name: string;
  problems: string[];
}

/**
 * The end-of-scenario invariants (after the agent converged with orphan grace 0):
 * every desired disk has its lvol and controller, nothing else is served, no bdev has two
 * controllers, goldens are read-only snapshots that did not change, the clone counts add
 * up, no import leftovers, and the journal replays to the agent's state.
 */
export async function checkInvariants(rig: SimRig, agent: NodeAgent, desired: DesiredState, goldens: Map<string, string>): Promise<InvariantResult[]> {
  // Leftovers of an interrupted import are tidied in the background after the first listing.
  const leftovers = (): boolean => rig.snapshot().bdevs.some((b) => b.kind === 'aio' && !rig.snapshot().lvstores.some((s) => s.baseBdev === b.name));
  for (let i = 0; i < 100 && leftovers(); i++) await sleep(10);
  const snap = rig.snapshot();
  const out: InvariantResult[] = [];
  const check = (name: string, problems: string[]): void => void out.push({ name, problems });
  const disks = desired.vmis.filter((v) => v.problems.length === 0).flatMap((v) => v.disks.filter((d) => !d.problem));
  const byName = new Map(snap.lvols.map((l) => [l.name, l]));

  check(
    'vmi-has-disks',
    disks.flatMap((d) => {
      const p: string[] = [];
      const l = d.source.kind === 'bdev' ? undefined : byName.get(d.id);
      if (d.source.kind !== 'bdev' && !l) p.push(`disk ${d.key}: lvol ${d.id} missing`);
      const c = snap.controllers.find((x) => x.name === d.controller);
      if (!c) p.push(`disk ${d.key}: controller ${d.controller} missing`);
      else if (l && c.bdev !== l.uuid) p.push(`disk ${d.key}: controller ${d.controller} serves ${c.bdev}, not ${l.uuid}`);
      return p;
    }),
  );
  const wanted = new Set(disks.map((d) => d.controller));
  check(
    'no-orphan-controller',
    snap.controllers.filter((c) => !wanted.has(c.name)).map((c) => `controller ${c.name} serves no desired disk`),
  );
  const perBdev = new Map<string, string[]>();
  for (const c of snap.controllers) if (c.bdev) perBdev.set(c.bdev, [...(perBdev.get(c.bdev) ?? []), c.name]);
  check(
    'one-controller-per-bdev',
    [...perBdev].filter(([, cs]) => cs.length > 1).map(([b, cs]) => `bdev ${b} has controllers ${cs.join(',')}`),
  );
  const imageNames = new Set(desired.images.map((i) => goldenImageName(i.name)));
  // Fan-outs: read-only snapshots of a golden that disks are cloned from in parallel.
  const goldenOf = (name: string): string | undefined => {
    const m = /^(img-[^.]+)\.f\d+$/.exec(name);
    return m?.[1] !== undefined && imageNames.has(m[1]) ? m[1] : undefined;
  };
  const ids = new Set(disks.map((d) => d.id));
  check(
    'no-leaked-lvol',
    snap.lvols.filter((l) => !ids.has(l.name) && !imageNames.has(l.name) && goldenOf(l.name) === undefined).map((l) => `lvol ${l.alias} belongs to nothing desired`),
  );
  check(
    'golden-unchanged',
    snap.lvols
      .filter((l) => imageNames.has(l.name))
      .flatMap((l) => {
        const p: string[] = [];
        if (!l.readOnly || !l.snapshot) p.push(`golden ${l.name} is not a read-only snapshot`);
        const fp = goldenFingerprint(l);
        const seen = goldens.get(l.name);
        if (seen !== undefined && seen !== fp) p.push(`golden ${l.name} changed: ${seen} -> ${fp}`);
        goldens.set(l.name, fp);
        const lanes = new Set([l.uuid, ...snap.lvols.filter((f) => goldenOf(f.name) === l.name).map((f) => f.uuid)]);
        const clones = snap.lvols
          .filter((c) => c.parent?.kind === 'snapshot' && lanes.has(c.parent.uuid) && goldenOf(c.name) === undefined)
          .map((c) => c.name)
          .sort();
        const expected = disks.filter((d) => d.source.kind === 'image' && goldenImageName(d.source.image) === l.name).map((d) => d.id).sort();
        if (JSON.stringify(clones) !== JSON.stringify(expected)) p.push(`golden ${l.name} has clones ${clones.join(',')}, expected ${expected.join(',')}`);
        return p;
      }),
  );
  check(
    'no-degraded-disk',
    snap.lvols.filter((l) => l.degraded).map((l) => `lvol ${l.alias} lost its external snapshot`),
  );
  check(
    'no-import-leftover',
    snap.bdevs.filter((b) => b.kind === 'aio' && !snap.lvstores.some((s) => s.baseBdev === b.name)).map((b) => `aio bdev ${b.name} left over`),
  );
  const sockets = (await readdir(rig.paths.vhost(), { recursive: true, withFileTypes: true }))
    .filter((e) => e.isSocket())
    .map((e) => path.relative(rig.paths.vhost(), path.join(e.parentPath, e.name)))
    .sort();
  check('sockets-match-controllers', JSON.stringify(sockets) === JSON.stringify([...wanted].sort()) ? [] : [`sockets ${sockets.join(',')} != controllers ${[...wanted].sort().join(',')}`]);
  const live = (agent as unknown as { journal: Journal }).journal.state;
  const a = await Journal.open(rig.paths.agentState());
  const b = await Journal.open(rig.paths.agentState());
  const replay: string[] = [];
  if (JSON.stringify(a.state) !== JSON.stringify(b.state)) replay.push('two replays of the journal differ');
  if (JSON.stringify(a.state.owned) !== JSON.stringify(live.owned)) replay.push('replayed journal owns other disks than the agent');
  if (Object.keys(a.state.pending).length) replay.push(`journal has pending intents: ${Object.keys(a.state.pending).join(',')}`);
  if (JSON.stringify(Object.keys(a.state.owned).sort()) !== JSON.stringify(disks.filter((d) => d.source.kind !== 'bdev').map((d) => d.id).sort()) && disks.some((d) => d.source.kind === 'bdev') === false) {
    replay.push(`journal owns ${Object.keys(a.state.owned).sort().join(',')}`);
  }
  check('journal-replays', replay);
  return out;
}

/** What identifies a golden's content in the simulator (it keeps no data): its UUID and clusters. */
function goldenFingerprint(l: ModelSnapshot['lvols'][number]): string {
  return `${l.uuid}:${l.clusters}:${l.allocated}`;
}
