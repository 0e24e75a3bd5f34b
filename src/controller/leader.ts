import { EventEmitter } from 'node:events';
import { V1MicroTime, type V1LeaseSpec } from '@kubernetes/client-node';
import { isConflict, type KubeApi } from '../kube/api.js';
import { errorText } from '../kube/informer.js';
import type { Logger } from '../log.js';

export interface LeaderElectorOptions {
  api: KubeApi;
  namespace: string;
  /** The Lease's name: one per job that must have one writer. */
  name: string;
  /** This candidate (the pod's name). */
  identity: string;
  logger: Logger;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
}

const DEFAULTS = { leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 2_000 };

type Attempt = 'mine' | 'other';

/**
 * Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it
 * (@kubernetes/client-node has none): every `retryPeriodMs` each candidate reads the Lease; the
 * holder renews it, another candidate takes it only once it has seen no change to it for the
 * lease duration (measured on its own clock, never by comparing clocks across machines). Every
 * write is a compare-and-swap on resourceVersion, so two candidates never both win. A leader
 * that cannot renew for `renewDeadlineMs` (< lease duration) stops leading before anyone else
 * may start; a leader that stops releases the Lease so that another takes over at once.
 * Emits `leading` and `following`.
 */
export class LeaderElector extends EventEmitter {
  private isLeading = false;
  private stopped = true;
  private lastRenew = 0;
  /** The Lease as last seen (holder and resourceVersion) and when, on this clock. */
  private observed: { stamp: string; at: number } | undefined;
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private readonly log: Logger;
  private readonly t: typeof DEFAULTS;

  constructor(private readonly opts: LeaderElectorOptions) {
    super();
    this.log = opts.logger.child({ lease: `${opts.namespace}/${opts.name}`, identity: opts.identity });
    this.t = {
      leaseDurationMs: opts.leaseDurationMs ?? DEFAULTS.leaseDurationMs,
      renewDeadlineMs: opts.renewDeadlineMs ?? DEFAULTS.renewDeadlineMs,
      retryPeriodMs: opts.retryPeriodMs ?? DEFAULTS.retryPeriodMs,
    };
    if (!(this.t.retryPeriodMs < this.t.renewDeadlineMs && this.t.renewDeadlineMs < this.t.leaseDurationMs)) {
      throw new Error(`leader election of ${opts.name}: retry period (${this.t.retryPeriodMs} ms) < renew deadline (${this.t.renewDeadlineMs} ms) < lease duration (${this.t.leaseDurationMs} ms) is required`);
    }
  }

  get leading(): boolean {
    return this.isLeading;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.loop = this.run();
  }

  /** Stops campaigning; a leader releases the Lease (a failed release only delays the next leader). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.wake?.();
    await this.loop;
    if (this.isLeading) {
      this.setLeading(false, 'stopped');
      await this.release().catch((e: unknown) => this.log.warn({ event: 'lease-release-failed', error: errorText(e) }, 'could not release the lease; the next leader waits for it to expire'));
    }
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      let result: Attempt | 'error';
      try {
        result = await this.attempt();
      } catch (e) {
        result = 'error';
        this.log[this.isLeading ? 'warn' : 'debug']({ event: 'lease-failed', error: errorText(e) }, 'cannot read or write the lease');
      }
      if (this.stopped) break;
      if (result === 'mine') {
        this.lastRenew = Date.now();
        if (!this.isLeading) this.setLeading(true, 'acquired');
      } else if (this.isLeading && (result === 'other' || Date.now() - this.lastRenew >= this.t.renewDeadlineMs)) {
        // Lost it, or could not renew in time: another candidate may take it once it expires.
        this.setLeading(false, result === 'other' ? 'taken by another candidate' : 'renew deadline passed');
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.t.retryPeriodMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  private setLeading(leading: boolean, why: string): void {
    this.isLeading = leading;
    this.log.info({ event: leading ? 'leader-elected' : 'leader-lost', why }, leading ? 'leading' : 'not leading');
    this.emit(leading ? 'leading' : 'following');
  }

  /** `acquireTime` as read back: the client hands MicroTime fields over as strings. */
  private spec(acquireTime: Date | string | undefined, transitions: number): V1LeaseSpec {
    const now = new V1MicroTime(Date.now());
    const acquired = acquireTime === undefined ? NaN : new Date(acquireTime).getTime();
    return {
      holderIdentity: this.opts.identity,
      leaseDurationSeconds: Math.ceil(this.t.leaseDurationMs / 1000),
      acquireTime: Number.isFinite(acquired) ? new V1MicroTime(acquired) : now,
      renewTime: now,
      leaseTransitions: transitions,
    };
  }

  /** One round: create, renew, or take over an expired Lease; 'other' when someone else holds it. */
  private async attempt(): Promise<Attempt> {
    const { api, namespace, name, identity } = this.opts;
    const cur = await api.getLease(namespace, name);
    try {
      if (!cur) {
        await api.createLease(namespace, { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name, namespace }, spec: this.spec(undefined, 0) });
        return 'mine';
      }
      const spec = cur.spec ?? {};
      const holder = spec.holderIdentity ?? '';
      const stamp = `${holder}@${cur.metadata?.resourceVersion ?? ''}`;
      const now = Date.now();
      if (stamp !== this.observed?.stamp) this.observed = { stamp, at: now };
      const durationMs = (spec.leaseDurationSeconds ?? Math.ceil(this.t.leaseDurationMs / 1000)) * 1000;
      const mine = holder === identity;
      if (!mine && holder !== '' && now - this.observed.at < durationMs) return 'other';
      const transitions = (spec.leaseTransitions ?? 0) + (mine ? 0 : 1);
      // resourceVersion from the read: a write by anyone since then answers 409.
      await api.replaceLease(namespace, name, { ...cur, spec: this.spec(mine ? spec.acquireTime : undefined, transitions) });
      return 'mine';
    } catch (e) {
      if (isConflict(e)) return 'other';
      throw e;
    }
  }

  /** Gives the Lease up: no holder, so the next candidate's round takes it without waiting. */
  private async release(): Promise<void> {
    const { api, namespace, name, identity } = this.opts;
    const cur = await api.getLease(namespace, name);
    if (!cur || cur.spec?.holderIdentity !== identity) return;
    const { holderIdentity: _me, ...rest } = cur.spec;
    await api.replaceLease(namespace, name, { ...cur, spec: { ...rest, leaseDurationSeconds: 1, renewTime: new V1MicroTime(Date.now()) } });
  }
}
