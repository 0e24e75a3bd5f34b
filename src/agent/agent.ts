import { EventEmitter } from 'node:events';
import { lstat, mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { SlotStatus, VmiRef, VmiStatus } from '../api/status.js';
import type { ObservedController, ObservedState, StorageBackend } from '../backend/types.js';
import { silentLogger, type Logger } from '../log.js';
import { DISK_PHASES, defaultMetrics, type Metrics } from '../metrics/metrics.js';
import { emptyDesired, type DesiredState } from './desired.js';
import { Executor, FreshObserver, describeError, type DiskOutcome } from './executor.js';
import { writeFileAtomic } from '../fsutil.js';
import { ImageCache, type CacheLimits } from './image-cache.js';
import type { ImagePeers } from './image-peers.js';
import type { BootProfiles } from './boot-profile.js';
import { Journal, type JournalOptions, type JournalState } from './journal.js';
import type { NodeStatus } from './node-status.js';
import { isFollowUp, isReport, orphanKey, reconcile, type Action, type ReconcileConfig, type SocketPolicy, type SocketStat } from './reconcile.js';
import { nodeStatusOf, reportOf, type ReconcileReport } from './report.js';
import { DEFAULT_RETRY, type RetryOptions } from './retry.js';
import { indexDesired, type DesiredIndex } from './safety.js';
import { nextFailoverDue, SourceFailover } from './source-failover.js';

export interface NodeAgentOptions {
  backend: StorageBackend;
  stateDir: string;
  logger?: Logger;
  /** Owner and mode of vhost sockets, for QEMU (uid/gid 107, 0660 by default). */
  socket?: Partial<SocketPolicy>;
  orphanGraceMs?: number;
  cache?: CacheLimits;
  /** Periodic reconcile, ms (0 = none). */
  resyncMs?: number;
  /** How soon a round follows one that saw a migrated disk still copying (progress, and its end). */
  hydrationPollMs?: number;
  /** Backend calls in flight at once. */
  concurrency?: number;
  retry?: RetryOptions;
  /** Reconcile passes per round before giving up until the next trigger. */
  maxPasses?: number;
  /** Called when a VMI's status changes (cluster mode patches the VMI annotation). */
  onVmiStatus?: (vmi: VmiRef, status: VmiStatus, problems: string[]) => void | Promise<void>;
  journal?: JournalOptions;
  node?: string;
  now?: () => number;
  /** Where the agent's metrics go; the process-wide ones (served on /metrics) by default. */
  metrics?: Metrics;
  /** Node-to-node image distribution (cluster mode): image sources by load, goldens exported to peers. */
  peers?: ImagePeers;
  /** Boot profiles other nodes published (cluster mode): a new lazy golden hydrates its key's first. */
  bootProfiles?: BootProfiles;
  /** With peers: a hydration whose source is unreachable this long moves to another source (source-failover.ts). Default 10 s. */
  sourceFailoverAfterMs?: number;
}

export type { ReconcileReport, VmiReport } from './report.js';

/** How long a hydration's source may stay unreachable before it moves to another (after QEMU's own 10 s NBD reconnect). */
export const DEFAULT_SOURCE_FAILOVER_AFTER_MS = 2_000;

export const DEFAULT_SOCKET_POLICY: SocketPolicy = { uid: 107, gid: 107, mode: 0o660 };

/**
 * The node agent loop: reconciles on every desired-state change, on a timer, and when the
 * backend comes back (live recovery); runs the executor; writes the status files.
 */
export class NodeAgent extends EventEmitter {
  private desired: DesiredState = emptyDesired();
  private desiredIdx: DesiredIndex = indexDesired(this.desired);
  private journal!: Journal;
  private images!: ImageCache;
  private executor!: Executor;
  private readonly observer: FreshObserver;
  private readonly failed = new Map<string, string>();
  private running: Promise<ReconcileReport> | undefined;
  private queued: Promise<ReconcileReport> | undefined;
  private queuedReasons = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private hydrationTimer: NodeJS.Timeout | undefined;
  private failoverTimer: NodeJS.Timeout | undefined;
  private failover: SourceFailover | undefined;
  private stopped = false;
  /** The journal's exports may be gone from the backend (a new process): make them again, once. */
  private exportsStale = true;
  private connectedAt: number | undefined;
  private readonly written = new Map<string, string>();
  private readonly config: ReconcileConfig;
  readonly log: Logger;
  readonly metrics: Metrics;
  lastReport: ReconcileReport | undefined;
  /** What `status.json` says since the last round (cluster mode publishes it without reading the file back). */
  lastNodeStatus: NodeStatus | undefined;

  constructor(private readonly opts: NodeAgentOptions) {
    super();
    this.log = opts.logger ?? silentLogger;
    this.metrics = opts.metrics ?? defaultMetrics();
    this.observer = new FreshObserver(opts.backend);
    this.config = {
      socket: { ...DEFAULT_SOCKET_POLICY, ...opts.socket },
      orphanGraceMs: opts.orphanGraceMs ?? 5 * 60_000,
      cache: opts.cache ?? {},
    };
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  get stateDir(): string {
    return this.opts.stateDir;
  }

  /** Opens the journal; call once before anything else. */
  async init(): Promise<void> {
    await mkdir(path.join(this.opts.stateDir, 'slots'), { recursive: true });
    this.journal = await Journal.open(this.opts.stateDir, { logger: this.log, ...this.opts.journal });
    const { peers, backend } = this.opts;
    if (peers) {
      this.failover = new SourceFailover({
        self: this.opts.node ?? 'local',
        afterMs: this.opts.sourceFailoverAfterMs ?? DEFAULT_SOURCE_FAILOVER_AFTER_MS,
        transport: backend.kind === 'qsd' ? 'nbd' : 'nvmf-tcp',
        canRetarget: backend.retargetImage !== undefined,
        // spdk's lazy golden is bound to the peer's NVMe bdev: it moves to another peer only.
        canRetargetToOrigin: backend.kind === 'qsd',
        view: () => peers.failoverView(),
        record: (name, source) => peers.setSource(name, source),
      });
    }
    this.images = new ImageCache(this.opts.backend, this.journal, { logger: this.log, now: () => this.now(), metrics: this.metrics, ...(this.opts.peers ? { peers: this.opts.peers } : {}), ...(this.opts.bootProfiles ? { bootProfiles: this.opts.bootProfiles } : {}) });
    this.executor = new Executor({
      backend: this.opts.backend,
      journal: this.journal,
      images: this.images,
      observer: this.observer,
      desiredNow: () => this.desiredIdx,
      logger: this.log,
      retry: this.opts.retry ?? DEFAULT_RETRY,
      concurrency: this.opts.concurrency ?? 128,
      now: () => this.now(),
      metrics: this.metrics,
      ...(this.failover ? { failover: this.failover } : {}),
      onImportSettled: (image) => {
        this.emit('import-settled', image);
        if (this.stopped) return;
        void this.reconcile(`image-settled:${image}`).catch((e: unknown) => this.log.error({ event: 'reconcile-failed', error: describeError(e) }, 'reconcile failed'));
      },
    });
  }

  /** Slot the journal last saw a VMI on (for slot conflicts: the incumbent keeps it). */
  slotHolder = (slot: string): string | undefined =>
    Object.entries(this.journal?.state.vmiSlots ?? {}).find(([, v]) => v.slot === slot)?.[0];

  /** What this node exports now (the journal's record), by disk id. */
  exportsNow(): Readonly<JournalState['exports']> {
    return this.journal?.state.exports ?? {};
  }

  /** The disks this agent made or opened (the journal's record), by disk id. */
  ownedNow(): Readonly<JournalState['owned']> {
    return this.journal?.state.owned ?? {};
  }

  setDesired(desired: DesiredState): void {
    this.desired = desired;
    this.desiredIdx = indexDesired(desired);
  }

  private readonly onConnected = (): void => {
    this.connectedAt = this.now();
    this.exportsStale = true;
    this.log.info({ event: 'backend-connected' }, 'backend connected; recovering controllers');
    void this.reconcile('backend-connected').catch((e: unknown) => this.log.error({ event: 'reconcile-failed', error: describeError(e) }, 'reconcile failed'));
  };

  private readonly onDisconnected = (): void => {
    this.log.warn({ event: 'backend-disconnected' }, 'backend disconnected');
  };

  /** Starts the timer and the recovery trigger. */
  start(): void {
    this.opts.backend.on('connected', this.onConnected);
    this.opts.backend.on('disconnected', this.onDisconnected);
    const every = this.opts.resyncMs ?? 30_000;
    if (every > 0) {
      this.timer = setInterval(() => {
        void this.reconcile('resync').catch((e: unknown) => this.log.error({ event: 'reconcile-failed', error: describeError(e) }, 'reconcile failed'));
      }, every);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    clearTimeout(this.hydrationTimer);
    this.hydrationTimer = undefined;
    clearTimeout(this.failoverTimer);
    this.failoverTimer = undefined;
    this.opts.backend.off('connected', this.onConnected);
    this.opts.backend.off('disconnected', this.onDisconnected);
    await Promise.allSettled([this.running, this.queued, this.executor?.stop()]);
  }

  /**
   * One reconcile round. Rounds never overlap: a trigger during a round queues one more round
   * (triggers coalesce), which sees the latest desired state.
   */
  reconcile(reason: string): Promise<ReconcileReport> {
    // The queued round begins a few microtasks after the running one ended: a trigger in between
    // joins it (beginning a round of its own would run two rounds at once).
    if (this.queued) {
      this.queuedReasons.add(reason);
      return this.queued;
    }
    if (!this.running) return this.begin(reason);
    this.queuedReasons.add(reason);
    this.queued = this.running
      .then(
        () => undefined,
        () => undefined,
      )
      .then(() => {
        const reasons = [...this.queuedReasons].join(',');
        this.queuedReasons.clear();
        this.queued = undefined;
        return this.begin(reasons);
      });
    return this.queued;
  }

  /**
   * Rounds until no disk waits for an image import of this agent (`--once`, tests): a round
   * itself never waits for one.
   */
  async converge(reason: string): Promise<ReconcileReport> {
    // A failed import is not retried before its backoff, so this ends with the failure reported.
    for (;;) {
      const ended = this.executor.importsEnded;
      const report = await this.reconcile(reason);
      const imports = this.executor.importsSettled();
      if (imports) await imports;
      else if (this.executor.importsEnded === ended) return report;
    }
  }

  private begin(reason: string): Promise<ReconcileReport> {
    const p = this.round(reason).finally(() => {
      if (this.running === p) this.running = undefined;
    });
    this.running = p;
    return p;
  }

  private async statSockets(controllers: ObservedController[]): Promise<Map<string, SocketStat>> {
    const out = new Map<string, SocketStat>();
    await Promise.all(
      controllers.map(async (c) => {
        try {
          const st = await lstat(c.socketPath);
          out.set(c.socketPath, { uid: st.uid, gid: st.gid, mode: st.mode & 0o777 });
        } catch {
          // Missing socket: the reconciler treats it as not ready.
        }
      }),
    );
    return out;
  }

  private async round(reason: string): Promise<ReconcileReport> {
    const t0 = this.now();
    const desired = this.desired;
    this.failed.clear();
    const maxPasses = this.opts.maxPasses ?? 8;
    let passes = 0;
    let plan: Action[] = [];
    let outcomes = new Map<string, DiskOutcome>();
    let converged = false;
    let controllersCreated = 0;
    let observed: ObservedState | undefined;
    let backendError: string | undefined;
    try {
      while (passes < maxPasses) {
        passes++;
        observed = await this.observer.fresh();
        const recheckExports = passes === 1 && this.exportsStale;
        const sockets = await this.statSockets(observed.controllers);
        plan = reconcile(
          desired,
          observed,
          { journal: this.journal.state, now: this.now(), failed: this.failed, sockets, recheckExports },
          this.config,
        );
        // Paused hydrations whose source stayed away too long move to another one (source-failover.ts).
        if (this.failover) plan = [...plan, ...(await this.failover.plan(observed.images, desired.images, this.now()))];
        await this.remember(plan, observed);
        if (recheckExports) this.exportsStale = false;
        if (!plan.some((a) => !isReport(a) && !isFollowUp(a))) {
          // Only hydrations to follow: asked once per round, they change nothing this round plans from.
          outcomes = plan.some(isFollowUp) ? (await this.executor.execute(plan)).outcomes : new Map();
          converged = true;
          break;
        }
        const exec = await this.executor.execute(plan);
        outcomes = exec.outcomes;
        controllersCreated += exec.controllersCreated;
        for (const [key, o] of exec.outcomes) if (o.permanent && o.message) this.failed.set(key, o.message);
        // Nothing could be done (all refused, unreachable, or waiting for an import): wait for the next trigger.
        if (exec.calls === 0 && (exec.refusals.length > 0 || exec.waiting > 0)) break;
      }
    } catch (e) {
      backendError = describeError(e);
      this.log.error({ event: 'reconcile-failed', reason, error: backendError }, 'reconcile round failed');
    }
    if (backendError === undefined) await this.journal.settleReplayed();
    const report = reportOf(reason, desired, plan, outcomes, {
      passes,
      converged,
      controllersCreated,
      durationMs: this.now() - t0,
      node: this.opts.node ?? 'local',
      ...(backendError !== undefined ? { backendError } : {}),
    });
    if (observed && this.opts.peers) await this.opts.peers.sync(observed.images);
    await this.writeStatus(report, plan, observed);
    if (reason.includes('backend-connected') && this.connectedAt !== undefined) {
      const durationMs = this.now() - this.connectedAt;
      this.connectedAt = undefined;
      this.log.info({ event: 'recovery', durationMs, controllers: controllersCreated, converged }, 'controllers recovered after a backend restart');
      this.metrics.recoveries.inc({ converged: String(converged) });
      this.metrics.recoveryDuration.observe(durationMs / 1000);
      this.metrics.recoveredControllers.inc(controllersCreated);
      this.emit('recovery', { durationMs, controllers: controllersCreated, converged });
    }
    this.log.info(
      { event: 'reconcile', reason, passes, durationMs: report.durationMs, converged, disks: report.vmis.reduce((n, v) => n + v.disks.length, 0) },
      'reconcile round done',
    );
    this.observeRound(report, observed);
    this.followHydration(report, observed);
    this.followFailover(observed);
    this.lastReport = report;
    this.emit('reconciled', report);
    return report;
  }

  /**
   * While a migrated disk copies, rounds come often enough to report its progress and its end;
   * while a golden hydrates, less often (peers choose by its percent; its end is published).
   */
  private followHydration(report: ReconcileReport, observed: ObservedState | undefined): void {
    const copying = report.vmis.some((v) => v.disks.some((d) => d.migration !== undefined && (d.migration.phase === 'Hydrating' || d.migration.phase === 'Paused')));
    const hydrating = observed?.images.some((i) => i.phase === 'hydrating') ?? false;
    if ((!copying && !hydrating) || this.stopped || this.hydrationTimer) return;
    const poll = this.opts.hydrationPollMs ?? 2_000;
    this.hydrationTimer = setTimeout(() => {
      this.hydrationTimer = undefined;
      if (this.stopped) return;
      void this.reconcile('hydration').catch((e: unknown) => this.log.error({ event: 'reconcile-failed', error: describeError(e) }, 'reconcile failed'));
    }, copying ? poll : 5 * poll);
  }

  /** A round runs when the next paused hydration becomes due for a switch, not only at the next resync. */
  private followFailover(observed: ObservedState | undefined): void {
    if (!this.failover || !observed || this.stopped || this.failoverTimer) return;
    const due = nextFailoverDue(observed.images, this.failover.afterMs, this.now());
    if (due === undefined) return;
    this.failoverTimer = setTimeout(() => {
      this.failoverTimer = undefined;
      if (this.stopped) return;
      void this.reconcile('source-failover').catch((e: unknown) => this.log.error({ event: 'reconcile-failed', error: describeError(e) }, 'reconcile failed'));
    }, Math.max(0, due - this.now()) + 50);
  }

  /** Gauges are set from the whole picture each round, so they never drift. */
  private observeRound(report: ReconcileReport, observed: ObservedState | undefined): void {
    const m = this.metrics;
    m.reconcileDuration.observe(report.durationMs / 1000);
    m.backendUp.set(report.backendOk ? 1 : 0);
    const byPhase = new Map<string, number>(DISK_PHASES.map((p) => [p, 0]));
    for (const v of report.vmis) for (const d of v.disks) byPhase.set(d.phase, (byPhase.get(d.phase) ?? 0) + 1);
    for (const [phase, count] of byPhase) m.disks.set({ phase }, count);
    if (observed) {
      m.imageCacheImages.set(observed.images.length);
      m.imageCacheBytes.set(observed.images.reduce((n, i) => n + i.sizeBytes, 0));
    }
  }

  /** Orphans' first-seen times; ownership records of things that are gone for good. */
  private async remember(plan: Action[], observed: ObservedState): Promise<void> {
    const j = this.journal.state;
    const orphans = new Map<string, number>();
    for (const a of plan) if (a.kind === 'reportOrphan') orphans.set(orphanKey(a.object, a.name), a.firstSeen);
    const stale = Object.keys(j.orphans).filter((k) => !orphans.has(k));
    const fresh = [...orphans].filter(([k]) => j.orphans[k] === undefined);
    const diskIds = new Set(observed.disks.map((d) => d.id));
    const ctlNames = new Set(observed.controllers.map((c) => c.name));
    const gone = Object.entries(j.owned)
      // An attached disk's record goes when it is detached (the executor drops it then).
      .filter(([id, o]) => o.source !== 'attached' && !this.desiredIdx.presentUids.has(o.vmi.uid) && (o.source === 'bdev' || !diskIds.has(id)) && !ctlNames.has(o.controller))
      .map(([id]) => id);
    const remaining = Object.entries(j.owned).filter(([id]) => !gone.includes(id));
    const goneUids = Object.keys(j.vmiSlots).filter((uid) => !this.desiredIdx.presentUids.has(uid) && !remaining.some(([, o]) => o.vmi.uid === uid));
    if (!stale.length && !fresh.length && !gone.length && !goneUids.length) return;
    await this.journal.update((s) => {
      for (const k of stale) delete s.orphans[k];
      for (const [k, t] of fresh) s.orphans[k] = t;
      for (const id of gone) delete s.owned[id];
      for (const uid of goneUids) delete s.vmiSlots[uid];
    });
    for (const [k, t] of fresh) this.log.warn({ event: 'orphan', object: k, firstSeen: new Date(t).toISOString() }, 'object matches our naming but belongs to no VMI');
  }

  private async writeIfChanged(file: string, body: object, stamp: object): Promise<void> {
    const key = JSON.stringify(body);
    if (this.written.get(file) === key) return;
    await writeFileAtomic(file, `${JSON.stringify({ ...body, ...stamp }, null, 2)}\n`);
    this.written.set(file, key);
  }

  private async writeStatus(report: ReconcileReport, plan: Action[], observed: ObservedState | undefined): Promise<void> {
    const updatedAt = new Date(this.now()).toISOString();
    const slotsDir = path.join(this.opts.stateDir, 'slots');
    const held = new Set<string>();
    await Promise.all(
      report.vmis.map(async (v) => {
        const ready = v.problems.length === 0 && v.disks.length > 0 && v.disks.every((d) => d.phase === 'Ready');
        if (v.slot) {
          held.add(`${v.slot}.json`);
          const slot: Omit<SlotStatus, 'updatedAt'> = { slot: v.slot, vmi: v.vmi, ready, disks: v.disks };
          await this.writeIfChanged(path.join(slotsDir, `${v.slot}.json`), slot, { updatedAt });
        }
        if (this.opts.onVmiStatus) {
          const status: Omit<VmiStatus, 'updatedAt'> = { ...(this.opts.node ? { node: this.opts.node } : {}), ...(v.slot ? { slot: v.slot } : {}), disks: v.disks };
          const key = `vmi:${v.vmi.uid}`;
          const body = JSON.stringify({ status, problems: v.problems });
          if (this.written.get(key) !== body) {
            this.written.set(key, body);
            await Promise.resolve(this.opts.onVmiStatus(v.vmi, { ...status, updatedAt }, v.problems)).catch((e: unknown) =>
              this.log.error({ event: 'status-hook-failed', vmi: v.vmi, error: describeError(e) }, 'could not publish VMI status'),
            );
          }
        }
      }),
    );
    // A slot no VMI holds any more has no readiness to report.
    for (const f of await readdir(slotsDir).catch(() => [] as string[])) {
      if (f.endsWith('.json') && !held.has(f)) {
        await rm(path.join(slotsDir, f), { force: true });
        this.written.delete(path.join(slotsDir, f));
      }
    }
    const node = nodeStatusOf(report, plan, observed, this.journal.state, { backend: this.opts.backend.kind, resyncMs: this.opts.resyncMs ?? 30_000 });
    // status.json is rewritten every round: its age tells `status` whether the agent is alive.
    const status: NodeStatus = { ...node, updatedAt };
    await writeFileAtomic(path.join(this.opts.stateDir, 'status.json'), `${JSON.stringify(status, null, 2)}\n`);
    this.lastNodeStatus = status;
  }
}
