import net from 'node:net';

export type LineResult = { kind: 'line'; text: string } | { kind: 'timeout' } | { kind: 'closed'; partial: string };

/**
 * A byte-level JSON-RPC client for tests: writes exactly what it is given and reads
 * newline-terminated responses, so that framing (the trailing "\n", back-to-back requests,
 * unanswered requests, closed connections) is observable.
 */
export class RawRpcClient {
  private buf = '';
  private closed = false;
  private readonly lines: string[] = [];
  private wake: (() => void) | undefined;
  private nextId = 1000;

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        this.lines.push(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 1);
      }
      this.wake?.();
    });
    const onEnd = (): void => {
      this.closed = true;
      this.wake?.();
    };
    sock.on('close', onEnd);
    sock.on('error', onEnd);
  }

  static connect(socketPath: string): Promise<RawRpcClient> {
    return new Promise((resolve, reject) => {
      const sock = net.connect(socketPath);
      sock.once('connect', () => resolve(new RawRpcClient(sock)));
      sock.once('error', reject);
    });
  }

  write(raw: string): void {
    this.sock.write(raw);
  }

  /** The next complete ("\n"-terminated) line, or why there is none within `timeoutMs`. */
  async nextLine(timeoutMs: number): Promise<LineResult> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = this.lines.shift();
      if (line !== undefined) return { kind: 'line', text: line };
      if (this.closed) return { kind: 'closed', partial: this.buf };
      const left = deadline - Date.now();
      if (left <= 0) return { kind: 'timeout' };
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  /** One request, one parsed response. */
  async call(method: string, params?: unknown, timeoutMs = 5000): Promise<{ result?: unknown; error?: { code: number; message: string } }> {
    const id = this.nextId++;
    this.write(JSON.stringify(params === undefined ? { jsonrpc: '2.0', method, id } : { jsonrpc: '2.0', method, id, params }));
    const r = await this.nextLine(timeoutMs);
    if (r.kind !== 'line') throw new Error(`${method}: no response (${r.kind})`);
    const msg = JSON.parse(r.text) as { id: unknown; result?: unknown; error?: { code: number; message: string } };
    if (msg.id !== id) throw new Error(`${method}: response id ${String(msg.id)} does not match ${id}`);
    return msg;
  }

  /** Like call, but throws on an error response. */
  async ok<T = unknown>(method: string, params?: unknown): Promise<T> {
    const r = await this.call(method, params);
    if (r.error) throw new Error(`${method}: ${r.error.code} ${r.error.message}`);
    return r.result as T;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(): void {
    this.sock.destroy();
  }
}
