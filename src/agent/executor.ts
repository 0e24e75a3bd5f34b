import { BackendError, type DiskHydration, type ObservedDisk, type RemoteDiskRef, type StorageBackend } from '../backend/types.js';
import { fixSocketOwnership } from '../backend/vhost-fs.js';
import { isClassifiedError } from '../backend/types.js';
import { silentLogger, type Logger } from '../log.js';
import { secondsSince, type Metrics } from '../metrics/metrics.js';
import type { ImageCache } from './image-cache.js';
import type { Journal, JournalState } from './journal.js';
import { exportKey, type Action, type DiskTarget } from './reconcile.js';
import { controllerName, socketPathProblem } from '../contract/index.js';
import { BackgroundImports } from './imports.js';
import type { SourceFailover } from './source-failover.js';
import type { FreshObserver } from './observer.js';
import { isTransient, withRetry, type RetryOptions } from './retry.js';
import { whyNotCreateController, whyNotDeleteController, whyNotDeleteDisk, whyNotDetachDisk, whyNotEvictImage, type DesiredIndex, type SafetyContext } from './safety.js';

export { FreshObserver } from './observer.js';

/** An operation a safety rule forbids right now (checked against a fresh observation). */
export class SafetyRefusal extends Error {
  override readonly name = 'SafetyRefusal';
  constructor(readonly action: Action['kind'], readonly object: string, reason: string) {
    super(`${action} ${object} refused: ${reason}`);
    this.reason = reason;
  }
  readonly reason: string;
}

export interface DiskOutcome {
  phase: 'Importing' | 'Provisioning' | 'Pending' | 'Failed';
  message?: string;
  /** Failed for a reason that retrying now will not fix (bad input, checksum, no space). */
  permanent: boolean;
  /** A remote clone's copy as hydrateDisk reported it in this round. */
  hydration?: DiskHydration;
}

export interface ExecResult {
  outcomes: Map<string, DiskOutcome>;
  /** Backend calls made. */
  calls: number;
  controllersCreated: number;
  refusals: SafetyRefusal[];
  /** Chains that only wait for an image import running in the background. */
  waiting: number;
}

export interface ExecutorDeps {
  backend: StorageBackend;
  journal: Journal;
  images: ImageCache;
  observer: FreshObserver;
  /** The desired state as it is now (it may have changed since the plan). */
  desiredNow: () => DesiredIndex;
  logger?: Logger;
  retry: RetryOptions;
  concurrency: number;
  now?: () => number;
  metrics?: Metrics;
  /** An image import started by a chain ended (ready or failed): time for another round. */
  onImportSettled?: (image: string) => void;
  /** Source failover (source-failover.ts): the records around a retargetImage call. */
  failover?: SourceFailover;
}

/** Runs `fn` over `items` with at most `limit` in flight. */
async function pool<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await fn(item);
    }
  });
  await Promise.all(workers);
}

/** busy or transport, for the retry metric. */
function retryKind(e: unknown): string {
  for (let x: unknown = e, depth = 0; x !== undefined && depth < 5; x = (x as { cause?: unknown }).cause, depth++) {
    if (isClassifiedError(x)) return x.kind;
  }
  return 'other';
}

export function describeError(e: unknown): string {
  if (e instanceof BackendError) return `${e.kind}: ${e.message}`;
  if (isClassifiedError(e)) return `${e.kind}: ${e.message}`;
  if (e instanceof Error) return e.message;
  return String(e);
}

/**
 * Executes a plan: deletions of controllers, then of disks, then one chain per desired disk
 * (chains run concurrently, so the calls of many VMIs are pipelined), then evictions. Every
 * call is journaled (intent, done), retried on busy/transport, and every destructive call (and
 * every controller creation) is re-checked against a fresh observation right before it runs.
 * A failing disk gets its own outcome; the other chains carry on.
 */
export class Executor {
  /** bdev -> controller being created for it in this process (one controller per bdev). */
  private readonly serving = new Map<string, string>();
  /** Image imports running beside the rounds (imports.ts). */
  private readonly imports: BackgroundImports;
  /** Disks (keys) that waited for an import: their clone is a cache miss. */
  private readonly waitedForImport = new Set<string>();

  constructor(private readonly deps: ExecutorDeps) {
    this.imports = new BackgroundImports({
      images: deps.images,
      retry: (what, fn, log) => this.retry(what, fn, log),
      ...(deps.onImportSettled ? { onSettled: deps.onImportSettled } : {}),
    });
  }

  private get log(): Logger {
    return this.deps.logger ?? silentLogger;
  }

  private async safety(): Promise<SafetyContext> {
    const observed = await this.deps.observer.fresh();
    const j = this.deps.journal.state;
    return { observed, desired: this.deps.desiredNow(), owned: j.owned, exported: j.exports };
  }

  private retry<T>(what: string, fn: () => Promise<T>, log: Logger): Promise<T> {
    return withRetry(fn, this.deps.retry, (err, attempt, delayMs) => {
      this.deps.metrics?.backendRetries.inc({ kind: retryKind(err) });
      log.warn({ event: 'retry', what, attempt, delayMs, error: describeError(err) }, 'transient backend error; retrying');
    });
  }

  /** Journals intent, calls, journals done (also on failure: the call is over). */
  private async journaled<T>(action: string, target: string, call: () => Promise<T>, log: Logger, before?: Parameters<Journal['intent']>[2], after?: Parameters<Journal['done']>[1]): Promise<T> {
    const op = await this.deps.journal.intent(action, target, before);
    let out: T;
    try {
      out = await this.retry(`${action} ${target}`, call, log);
    } catch (e) {
      await this.deps.journal.done(op);
      throw e;
    }
    await this.deps.journal.done(op, after);
    return out;
  }

  async execute(plan: readonly Action[]): Promise<ExecResult> {
    const result: ExecResult = { outcomes: new Map(), calls: 0, controllersCreated: 0, refusals: [], waiting: 0 };
    const refused = (e: unknown): boolean => {
      if (e instanceof SafetyRefusal) {
        result.refusals.push(e);
        this.log.warn({ event: 'refused', action: e.action, object: e.object, reason: e.reason }, 'safety rule stopped an action');
        return true;
      }
      return false;
    };
    const { concurrency } = this.deps;

    const ctlDeletes = plan.filter((a): a is Extract<Action, { kind: 'deleteController' }> => a.kind === 'deleteController');
    await pool(ctlDeletes, concurrency, async (a) => {
      const log = this.log.child({ controller: a.name, ...(a.target ? { vmi: a.target.vmi, disk: a.target.disk, slot: a.target.slot } : {}) });
      try {
        const why = whyNotDeleteController(await this.safety(), a.name);
        if (why) throw new SafetyRefusal('deleteController', a.name, why);
        result.calls++;
        await this.journaled('deleteController', a.name, () => this.deps.backend.deleteController(a.name), log);
        log.info({ event: 'controller-deleted', reason: a.reason }, 'controller deleted');
      } catch (e) {
        if (!refused(e)) log.error({ event: 'delete-failed', error: describeError(e) }, 'deleting controller failed');
        if (a.target) result.outcomes.set(a.target.key, { phase: 'Pending', message: describeError(e), permanent: false });
      }
    });

    // Exports and attachments that nothing wants any more (before disk deletions: an export keeps its disk).
    const unexports = plan.filter((a): a is Extract<Action, { kind: 'unexportDisk' }> => a.kind === 'unexportDisk');
    await pool(unexports, concurrency, async (a) => {
      const log = this.log.child({ disk: a.id });
      try {
        // A migration that wants it again since the plan was made keeps it.
        const wanted = this.deps.desiredNow().exports.get(a.id);
        if (wanted) throw new SafetyRefusal('unexportDisk', a.id, `disk ${a.id} is exported again (${wanted.why})`);
        const unexport = this.remote('unexportDisk', a.id);
        result.calls++;
        await this.journaled('unexportDisk', a.id, () => unexport(a.id), log, undefined, (s) => {
          delete s.exports[a.id];
        });
        log.info({ event: 'disk-unexported', reason: a.reason }, 'export deleted');
      } catch (e) {
        if (!refused(e)) log.error({ event: 'unexport-failed', error: describeError(e) }, 'deleting export failed');
      }
    });
    const detaches = plan.filter((a): a is Extract<Action, { kind: 'detachDisk' }> => a.kind === 'detachDisk');
    await pool(detaches, concurrency, async (a) => {
      const log = this.log.child({ disk: a.id });
      try {
        const why = whyNotDetachDisk(await this.safety(), a.id);
        if (why) throw new SafetyRefusal('detachDisk', a.id, why);
        const detach = this.remote('detachRemoteDisk', a.id);
        result.calls++;
        await this.journaled('detachDisk', a.id, () => detach(a.id), log, undefined, (s) => {
          delete s.owned[a.id];
        });
        log.info({ event: 'disk-detached', reason: a.reason }, 'remote disk detached');
      } catch (e) {
        if (!refused(e)) log.error({ event: 'detach-failed', error: describeError(e) }, 'detaching remote disk failed');
      }
    });

    const diskDeletes = plan.filter((a): a is Extract<Action, { kind: 'deleteDisk' }> => a.kind === 'deleteDisk');
    await pool(diskDeletes, concurrency, async (a) => {
      const log = this.log.child({ disk: a.id });
      try {
        const why = whyNotDeleteDisk(await this.safety(), a.id);
        if (why) throw new SafetyRefusal('deleteDisk', a.id, why);
        result.calls++;
        await this.journaled('deleteDisk', a.id, () => this.deps.backend.deleteDisk(a.id), log, undefined, (s) => {
          delete s.owned[a.id];
        });
        log.info({ event: 'disk-deleted', reason: a.reason }, 'disk deleted');
      } catch (e) {
        if (!refused(e)) log.error({ event: 'delete-failed', error: describeError(e) }, 'deleting disk failed');
      }
    });

    const chains = new Map<string, { target: DiskTarget; steps: Action[] }>();
    for (const a of plan) {
      if (a.kind !== 'ensureImage' && a.kind !== 'ensureDisk' && a.kind !== 'attachDisk' && a.kind !== 'cloneDisk' && a.kind !== 'ensureController' && a.kind !== 'fixSocket' && a.kind !== 'hydrateDisk') continue;
      const c = chains.get(a.target.key) ?? { target: a.target, steps: [] };
      c.steps.push(a);
      chains.set(a.target.key, c);
    }
    await pool([...chains.values()], concurrency, async (chain) => {
      const outcome = await this.runChain(chain.target, chain.steps, result, refused);
      result.outcomes.set(chain.target.key, outcome);
    });

    // After the chains: spdk's nvmf claims a bdev that its vhost controller must already have open.
    const exports = plan.filter((a): a is Extract<Action, { kind: 'ensureExport' }> => a.kind === 'ensureExport');
    await pool(exports, concurrency, async (a) => {
      const log = this.log.child({ vmi: a.vmi, disk: a.disk, id: a.id });
      try {
        const exportDisk = this.remote('exportDisk', a.id);
        result.calls++;
        let ref: RemoteDiskRef | undefined;
        await this.journaled('ensureExport', a.id, async () => (ref = await exportDisk(a.id, { listenAddress: a.address })), log, undefined, (s) => {
          if (ref) s.exports[a.id] = { ref, vmi: a.vmi, disk: a.disk };
        });
        log.info({ event: 'disk-exported', why: a.why }, 'disk exported');
      } catch (e) {
        log.error({ event: 'export-failed', error: describeError(e) }, 'exporting disk failed');
        // Not tried again in this round (retried calls are over); the next round tries again.
        result.outcomes.set(exportKey(a.id), { phase: 'Failed', message: describeError(e), permanent: true });
      }
    });

    // Prefetch: a warm image's import runs beside the rounds like a disk's; the round waits for
    // nothing (it ends as waiting, and the import's end triggers the next one).
    for (const a of plan) {
      if (a.kind !== 'warmImage') continue;
      const name = a.image.name;
      result.waiting++;
      if (this.imports.has(name) || this.imports.failure(name)?.backingOff) continue;
      result.calls++;
      this.imports.start(a.image, this.log.child({ image: name, reason: 'prefetch' }));
    }

    for (const a of plan) {
      if (a.kind !== 'retargetImage') continue;
      result.calls++;
      await this.retargetImage(a);
    }

    for (const a of plan) {
      if (a.kind !== 'evictImage') continue;
      const log = this.log.child({ image: a.name });
      try {
        const why = whyNotEvictImage(await this.safety(), a.name, this.deps.images.importing(a.name) || this.imports.has(a.name));
        if (why) throw new SafetyRefusal('evictImage', a.name, why);
        result.calls++;
        await this.retry(`evictImage ${a.name}`, () => this.deps.images.evict(a.name), log);
      } catch (e) {
        if (!refused(e)) log.error({ event: 'evict-failed', error: describeError(e) }, 'evicting image failed');
      }
    }
    return result;
  }

  /**
   * Moves a paused hydration onto another source (source-failover.ts decided which). Not
   * retried here: a source that fails is skipped and the next round chooses another.
   */
  private async retargetImage(a: Extract<Action, { kind: 'retargetImage' }>): Promise<void> {
    const name = a.image.name;
    const log = this.log.child({ image: name });
    const { backend, failover } = this.deps;
    if (!backend.retargetImage || !failover) return;
    const previous = (await failover.view()).sources[name];
    const op = await this.deps.journal.intent('retargetImage', name);
    try {
      await failover.willSwitch(a);
      const img = await backend.retargetImage(a.image);
      log.info({ event: 'image-source-switched', from: a.from, to: a.to, unreachableMs: a.unreachableMs, phase: img.phase }, 'hydration switched to another source');
    } catch (e) {
      await failover.switchFailed(a, previous, (this.deps.now ?? Date.now)()).catch(() => undefined);
      log.warn({ event: 'image-source-switch-failed', from: a.from, to: a.to, error: describeError(e) }, 'could not switch the hydration to that source; another is tried next');
    } finally {
      await this.deps.journal.done(op);
    }
  }

  /** A migration method of the backend, or a clear error when this backend has none. */
  private remote<K extends 'exportDisk' | 'unexportDisk' | 'attachRemoteDisk' | 'detachRemoteDisk' | 'cloneRemoteDisk' | 'hydrateDisk'>(method: K, id: string): NonNullable<StorageBackend[K]> {
    const b = this.deps.backend;
    const fn = b[method];
    if (!fn) throw new BackendError(`disk ${id}: the ${b.kind} backend does not implement ${method}`, 'invalid');
    return fn.bind(b) as NonNullable<StorageBackend[K]>;
  }

  /** Imports ended so far (a round that saw one end has a newer picture to plan from). */
  get importsEnded(): number {
    return this.imports.ended;
  }

  /** Settles when the imports running now have ended (undefined when none runs). */
  importsSettled(): Promise<void> | undefined {
    return this.imports.settled();
  }

  /** Stops the background imports and waits until they have ended. */
  stop(): Promise<void> {
    return this.imports.stop();
  }

  private async runChain(target: DiskTarget, steps: Action[], result: ExecResult, refused: (e: unknown) => boolean): Promise<DiskOutcome> {
    const log = this.log.child({ vmi: target.vmi, disk: target.disk, slot: target.slot });
    let diskRef: string | undefined;
    let socketPath: string | undefined;
    let createdController: string | undefined;
    let phase: DiskOutcome['phase'] = 'Provisioning';
    let hydration: DiskHydration | undefined;
    const t0 = process.hrtime.bigint();
    const m = this.deps.metrics;
    try {
      // Nothing is created for a disk whose socket could never be bound (no lvol left behind).
      const ctl = steps.find((s) => s.kind === 'ensureController');
      const tooLong = ctl?.kind === 'ensureController' ? socketPathProblem(this.deps.backend.vhostDir, ctl.spec.name) : undefined;
      if (tooLong) throw new BackendError(`controller ${ctl?.kind === 'ensureController' ? ctl.spec.name : ''}: ${tooLong}`, 'invalid');
      const made = steps.find((s) => s.kind === 'ensureDisk');
      const madeHere = made?.kind === 'ensureDisk' && made.spec.source.kind !== 'bdev';
      const attaching = steps.some((s) => s.kind === 'attachDisk' || s.kind === 'cloneDisk');
      for (const a of steps) {
        switch (a.kind) {
          case 'ensureImage': {
            // The import runs beside the rounds; this disk waits in Importing, the others go on.
            phase = 'Importing';
            const name = a.image.name;
            const failure = this.imports.failure(name);
            if (failure?.backingOff) throw failure.error;
            if (!this.imports.has(name)) {
              result.calls++;
              this.imports.start(a.image, log);
            }
            result.waiting++;
            this.waitedForImport.add(target.key);
            return { phase: 'Importing', permanent: false, ...(failure ? { message: `retrying; the last attempt failed: ${describeError(failure.error)}` } : {}) };
          }
          case 'ensureDisk': {
            result.calls++;
            const spec = a.spec;
            const disk = await this.journaled('ensureDisk', spec.id, () => this.deps.backend.ensureDisk(spec), log, (s) => {
              // Ours from the moment we ask: a crash after the create still knows who it belongs to.
              s.owned[spec.id] = {
                vmi: target.vmi,
                disk: target.disk,
                slot: target.slot,
                controller: controllerName(target.slot, target.disk),
                source: spec.source.kind,
                ...(spec.source.kind === 'image' ? { image: spec.source.image } : {}),
                createdAt: (this.deps.now ?? Date.now)(),
              };
              s.vmiSlots[target.vmi.uid] = { slot: target.slot, namespace: target.vmi.namespace, name: target.vmi.name };
            });
            diskRef = disk.ref;
            if (spec.source.kind === 'image') {
              await this.deps.images.touch(spec.source.image);
              // A miss is a clone that had to wait for its image to be imported first.
              if (this.waitedForImport.delete(target.key)) m?.imageCacheMisses.inc();
              else m?.imageCacheHits.inc();
            }
            log.info({ event: 'disk-ready', id: spec.id, ref: disk.ref }, 'disk provisioned');
            break;
          }
          case 'attachDisk': {
            result.calls++;
            const attach = this.remote('attachRemoteDisk', a.id);
            const remember = (s: JournalState, ref?: string): void => {
              // Ours to detach from the moment we ask (never to delete: the data is the other node's).
              s.owned[a.id] = {
                vmi: target.vmi,
                disk: target.disk,
                slot: target.slot,
                controller: controllerName(target.slot, target.disk),
                source: 'attached',
                ...(ref !== undefined ? { ref } : {}),
                createdAt: (this.deps.now ?? Date.now)(),
              };
              s.vmiSlots[target.vmi.uid] = { slot: target.slot, namespace: target.vmi.namespace, name: target.vmi.name };
            };
            let disk: ObservedDisk | undefined;
            try {
              disk = await this.journaled('attachDisk', a.id, async () => (disk = await attach(a.ref, a.id)), log, (s) => remember(s), (s) => remember(s, disk?.ref));
            } catch (e) {
              // An export that cannot be reached fails the disk (the migration planner refuses on it).
              // No `cause`: the retry policy looks through causes, and this failure is final for the round.
              if (isTransient(e)) throw new BackendError(`export on node ${a.node} unreachable: ${describeError(e)}`, 'invalid');
              throw e;
            }
            diskRef = disk.ref;
            log.info({ event: 'disk-attached', id: a.id, ref: disk.ref, node: a.node }, 'remote disk attached');
            break;
          }
          case 'cloneDisk': {
            result.calls++;
            const clone = this.remote('cloneRemoteDisk', a.id);
            let disk: ObservedDisk | undefined;
            try {
              disk = await this.journaled('cloneDisk', a.id, async () => (disk = await clone(a.ref, a.id)), log, (s) => {
                // Ours from the moment we ask (owned: deleted with its VMI, or on rollback).
                s.owned[a.id] = {
                  vmi: target.vmi,
                  disk: target.disk,
                  slot: target.slot,
                  controller: controllerName(target.slot, target.disk),
                  source: 'remote',
                  migration: a.migration,
                  createdAt: (this.deps.now ?? Date.now)(),
                };
                s.vmiSlots[target.vmi.uid] = { slot: target.slot, namespace: target.vmi.namespace, name: target.vmi.name };
              });
            } catch (e) {
              // As for attachDisk: an export that cannot be reached fails the disk (the planner refuses on it).
              if (isTransient(e)) throw new BackendError(`export on node ${a.node} unreachable: ${describeError(e)}`, 'invalid');
              throw e;
            }
            diskRef = disk.ref;
            log.info({ event: 'disk-cloned-remote', id: a.id, ref: disk.ref, node: a.node }, 'disk cloned from another node\'s export');
            break;
          }
          case 'hydrateDisk': {
            // Follows the copy; a source that is away pauses it (reported, retried next round), never fails the disk.
            const hydrate = this.remote('hydrateDisk', a.id);
            try {
              hydration = await hydrate(a.id);
            } catch (e) {
              hydration = { id: a.id, state: 'paused', percent: 0, message: describeError(e) };
            }
            if (hydration.state === 'standalone') log.info({ event: 'disk-hydrated', id: a.id, node: a.node }, 'disk hydrated: no longer reads from the other node');
            break;
          }
          case 'ensureController': {
            const ref = a.spec.diskRef ?? diskRef;
            if (ref === undefined) throw new BackendError(`no disk to serve for controller ${a.spec.name}`, 'internal');
            const holder = this.serving.get(ref);
            if (holder !== undefined && holder !== a.spec.name) throw new SafetyRefusal('ensureController', a.spec.name, `bdev ${ref} is being served by controller ${holder} (one controller per bdev)`);
            this.serving.set(ref, a.spec.name);
            try {
              // A disk this chain had to make (it was not there when the plan was observed) can
              // be served by no controller but one this process makes, which `serving` guards:
              // the re-check's fresh listing is skipped for it, so provisioning many disks does
              // not list the whole node once per disk while the clones run.
              if (!madeHere || attaching) {
                const why = whyNotCreateController(await this.safety(), a.spec.name, ref);
                if (why) throw new SafetyRefusal('ensureController', a.spec.name, why);
              }
              result.calls++;
              const spec = { ...a.spec, diskRef: ref };
              const c = await this.journaled('ensureController', a.spec.name, () => this.deps.backend.ensureController(spec), log, (s) => {
                s.vmiSlots[target.vmi.uid] = { slot: target.slot, namespace: target.vmi.namespace, name: target.vmi.name };
              });
              socketPath = c.socketPath;
              createdController = c.name;
              result.controllersCreated++;
            } finally {
              this.serving.delete(ref);
            }
            break;
          }
          case 'fixSocket': {
            const p = a.path ?? socketPath;
            if (p === undefined) throw new BackendError(`controller ${a.controller} has no socket path`, 'internal');
            await fixSocketOwnership(p, a.policy);
            break;
          }
          default:
            break;
        }
      }
      // Only chains that made a disk count as provisioning (not controller re-creations).
      if (made?.kind === 'ensureDisk') m?.provisionDuration.observe({ source: made.spec.source.kind }, secondsSince(t0));
      return { phase, permanent: false, ...(hydration ? { hydration } : {}) };
    } catch (e) {
      if (refused(e)) return { phase: 'Pending', message: (e as SafetyRefusal).message, permanent: false };
      const message = describeError(e);
      if (isTransient(e)) {
        log.warn({ event: 'disk-pending', error: message }, 'backend unavailable; will retry');
        return { phase: 'Pending', message: `will retry: ${message}`, permanent: false };
      }
      log.error({ event: 'disk-failed', error: message }, 'disk failed');
      if (createdController !== undefined) {
        // Not half-made: a controller whose socket QEMU may not use is taken down again.
        const name = createdController;
        await this.journaled('deleteController', name, () => this.deps.backend.deleteController(name), log).catch((err: unknown) =>
          log.error({ event: 'rollback-failed', controller: name, error: describeError(err) }, 'could not remove the controller of a failed disk'),
        );
      }
      return { phase: 'Failed', message, permanent: true };
    }
  }
}
