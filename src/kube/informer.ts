import { EventEmitter } from 'node:events';
import { ListWatch, Watch, type KubeConfig, type KubernetesListObject, type KubernetesObject } from '@kubernetes/client-node';
import { backoffMs, type Backoff } from '../backoff.js';
import type { Logger } from '../log.js';

/**
 * A client-node ListWatch that survives the API server going away. ListWatch relists by itself
 * on 410 Gone and rewatches after a clean close, but on any other error (connection refused,
 * 5xx) it stops for good: this restarts it with a bounded exponential backoff. Its cache is
 * kept across failures, so consumers see the last known objects (never an empty view) while
 * the API server is unreachable.
 */
export interface InformerOptions<T extends KubernetesObject> {
  /** For logs and readiness messages, e.g. `vmis`. */
  name: string;
  kubeConfig: KubeConfig;
  /** The watch path, e.g. `/api/v1/pods`. */
  path: string;
  list: () => Promise<KubernetesListObject<T>>;
  labelSelector?: string;
  fieldSelector?: string;
  logger: Logger;
  backoff?: Backoff;
}

/** Informer restarts and API writes: from half a second up to 30 s while the API server is away. */
export const DEFAULT_API_BACKOFF: Backoff = { initialMs: 500, maxMs: 30_000 };

/** Reports when a watch request was answered with 200 (the list before it was applied). */
class TrackingWatch extends Watch {
  constructor(
    kc: KubeConfig,
    private readonly onEstablished: () => void,
  ) {
    super(kc);
  }

  override async watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    let failed = false;
    const ctl = await super.watch(path, queryParams, callback, (err: unknown) => {
      if (err) failed = true;
      done(err);
    });
    // super.watch returns after the response headers arrived; a failure has called done by then.
    if (!failed) this.onEstablished();
    return ctl;
  }
}

export class ResilientInformer<T extends KubernetesObject> extends EventEmitter {
  private readonly lw: ListWatch<T>;
  private hasSynced = false;
  private healthy = false;
  private stopped = true;
  private failures = 0;
  private restartTimer: NodeJS.Timeout | undefined;
  private lastErrorText: string | undefined;
  private readonly log: Logger;

  constructor(private readonly opts: InformerOptions<T>) {
    super();
    this.log = opts.logger.child({ informer: opts.name });
    const watch = new TrackingWatch(opts.kubeConfig, () => this.established());
    this.lw = new ListWatch<T>(opts.path, watch, opts.list, false, opts.labelSelector, opts.fieldSelector);
    const changed = (): void => {
      this.emit('change');
    };
    this.lw.on('add', changed);
    this.lw.on('update', changed);
    this.lw.on('delete', changed);
    this.lw.on('error', (err: unknown) => this.failed(err));
  }

  get name(): string {
    return this.opts.name;
  }

  /** True once a full list was applied and a watch ran: the cache is the cluster's view. */
  get synced(): boolean {
    return this.hasSynced;
  }

  /** False while the API server cannot be reached (the cache holds the last known objects). */
  get connected(): boolean {
    return this.healthy;
  }

  get lastError(): string | undefined {
    return this.lastErrorText;
  }

  list(): readonly T[] {
    return this.lw.list();
  }

  /** Starts listing and watching; never throws (failures are retried in the background). */
  async start(): Promise<void> {
    this.stopped = false;
    await this.lw.start().catch((e: unknown) => this.failed(e));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    await this.lw.stop();
  }

  private established(): void {
    const firstSync = !this.hasSynced;
    const wasDown = !this.healthy;
    this.hasSynced = true;
    this.healthy = true;
    this.failures = 0;
    this.lastErrorText = undefined;
    if (wasDown) this.log.info({ event: 'informer-connected', firstSync }, 'watching');
    if (firstSync) this.emit('synced');
    if (wasDown) this.emit('health', true);
  }

  private failed(err: unknown): void {
    if (this.stopped) return;
    const text = errorText(err);
    const wasHealthy = this.healthy;
    this.healthy = false;
    this.lastErrorText = text;
    this.failures++;
    const delayMs = backoffMs(this.failures, this.opts.backoff ?? DEFAULT_API_BACKOFF);
    // One warning per outage, then debug lines: a long outage must not flood the log.
    const level = wasHealthy || this.failures === 1 ? 'warn' : 'debug';
    this.log[level]({ event: 'informer-failed', error: text, retryInMs: delayMs, failures: this.failures }, 'watch failed; keeping the last known objects and retrying');
    if (wasHealthy) this.emit('health', false);
    if (this.restartTimer) return;
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (this.stopped) return;
      void this.lw.start().catch((e: unknown) => this.failed(e));
    }, delayMs);
  }
}

export function errorText(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { statusCode?: unknown; code?: unknown }).statusCode ?? (err as { code?: unknown }).code;
    return code !== undefined ? `${err.message} (${String(code)})` : err.message;
  }
  return String(err);
}
