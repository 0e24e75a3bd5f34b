import { EventEmitter } from 'node:events';
import type { Logger } from '../log.js';
import { errorText } from './informer.js';
import type { PodSlot } from './podresources.js';

/** What cluster mode needs of the kubelet's PodResources API (PodResourcesClient). */
export interface SlotLister {
  listSlots(timeoutMs?: number): Promise<PodSlot[]>;
  close(): void;
}

export interface PodSlotPollerOptions {
  podResources: SlotLister;
  logger: Logger;
  /** Periodic poll, besides the ones asked for (on every launcher pod event). */
  pollMs?: number;
}

/**
 * Pod -> slot from the kubelet's PodResources API, polled on a timer and on demand. A failed
 * poll keeps the last known slots: a kubelet restart must not look like every pod left.
 * Emits `change` when the slots differ from the last answer (and on the first answer).
 */
export class PodSlotPoller extends EventEmitter {
  private current: PodSlot[] = [];
  private okState: boolean | undefined;
  private errorState: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private readonly log: Logger;

  constructor(private readonly opts: PodSlotPollerOptions) {
    super();
    this.log = opts.logger;
  }

  /** The slots of the last successful poll. */
  get slots(): readonly PodSlot[] {
    return this.current;
  }

  /** undefined before the first answer; false while the last poll failed. */
  get ok(): boolean | undefined {
    return this.okState;
  }

  get lastError(): string | undefined {
    return this.errorState;
  }

  /** Polls now and then every `pollMs`. */
  async start(): Promise<void> {
    this.timer = setInterval(() => void this.poll(), this.opts.pollMs ?? 10_000);
    await this.poll();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.polling;
    this.opts.podResources.close();
  }

  /** Polls now; a poll asked for while one runs runs once more after it. */
  poll(): Promise<void> {
    if (this.polling) {
      this.again = true;
      return this.polling;
    }
    this.polling = (async () => {
      do {
        this.again = false;
        await this.pollOnce();
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.polling = undefined;
    });
    return this.polling;
  }

  private async pollOnce(): Promise<void> {
    try {
      const slots = await this.opts.podResources.listSlots();
      if (this.okState !== true) this.log.info({ event: 'podresources-ok' }, 'PodResources API answered');
      const changed = this.okState === undefined || JSON.stringify(slots) !== JSON.stringify(this.current);
      this.okState = true;
      this.errorState = undefined;
      this.current = slots;
      if (changed) this.emit('change');
    } catch (e) {
      if (this.okState !== false) this.log.warn({ event: 'podresources-failed', error: errorText(e) }, 'PodResources API failed; keeping the last known slots');
      if (this.okState === true) this.okState = false;
      this.errorState = errorText(e);
    }
  }
}
