/**
 * Where device health comes from. All slots share the storage backend: when it is down, no
 * new VMI can get a disk on this node, so every slot turns Unhealthy and the scheduler stops
 * placing VMIs here.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';

export interface HealthSource {
  healthy(): boolean;
  /** Called after every change of healthy(); returns an unsubscribe function. */
  onChange(listener: () => void): () => void;
  close(): void;
}

/** Health set by hand: tests, and nodes without a backend to probe. */
export class ManualHealth implements HealthSource {
  private readonly events = new EventEmitter();
  constructor(private value = true) {}
  healthy(): boolean {
    return this.value;
  }
  set(value: boolean): void {
    if (value === this.value) return;
    this.value = value;
    this.events.emit('change');
  }
  onChange(listener: () => void): () => void {
    this.events.on('change', listener);
    return () => this.events.off('change', listener);
  }
  close(): void {
    this.events.removeAllListeners();
  }
}

/**
 * Healthy while the backend's control socket (spdk_tgt RPC, or QSD's QMP) accepts
 * connections. Connecting is enough: a wedged-but-listening backend is the agent's business.
 */
export class SocketProbeHealth implements HealthSource {
  private readonly manual = new ManualHealth(false);
  private readonly timer: NodeJS.Timeout;
  private inflight: Promise<boolean> | undefined;

  constructor(
    private readonly socketPath: string,
    intervalMs = 2000,
    private readonly timeoutMs = 1000,
  ) {
    this.timer = setInterval(() => void this.probe(), intervalMs);
    this.timer.unref();
    void this.probe();
  }

  /** One fresh probe; a call made while the timer's probe runs waits for it, then probes. */
  async probe(): Promise<boolean> {
    while (this.inflight) await this.inflight;
    const p = this.connectOnce().then((ok) => {
      this.manual.set(ok);
      return ok;
    });
    this.inflight = p;
    try {
      return await p;
    } finally {
      this.inflight = undefined;
    }
  }

  private connectOnce(): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const s = net.connect(this.socketPath);
      const done = (v: boolean): void => {
        s.destroy();
        resolve(v);
      };
      s.setTimeout(this.timeoutMs, () => done(false));
      s.once('connect', () => done(true));
      s.once('error', () => done(false));
    });
  }

  healthy(): boolean {
    return this.manual.healthy();
  }
  onChange(listener: () => void): () => void {
    return this.manual.onChange(listener);
  }
  close(): void {
    clearInterval(this.timer);
    this.manual.close();
  }
}
