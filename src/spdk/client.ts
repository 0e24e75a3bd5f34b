/**
 * JSON-RPC client for spdk_tgt's unix socket. One connection, many requests in flight
 * (SPDK answers in completion order, matched by id), per-call timeout and cancellation,
 * and reconnect with exponential backoff when spdk_tgt restarts.
 *
 * The message types come from json-rpc-2.0. Its JSONRPCClient is not used: SPDK's wire format
 * differs from what it assumes (no batches, replies not newline-delimited by contract), and
 * we keep our own id -> waiter map for deadlines and cancellation anyway, so routing each reply
 * through the library's second map and its promise chain only doubled the per-call cost.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import type { JSONRPCErrorResponse, JSONRPCID, JSONRPCRequest } from 'json-rpc-2.0';
import { silentLogger, type Logger } from '../log.js';
import { defaultMetrics, secondsSince, type Metrics } from '../metrics/metrics.js';
import { backoffMs } from '../backoff.js';
import { SpdkError, classifySpdkError } from './errors.js';
import { JsonStreamScanner } from './framing.js';

export interface SpdkRpcClientOptions {
  socketPath: string;
  /** Per-call deadline, including any wait for (re)connection. Default 30000. */
  timeoutMs?: number;
  /** Reconnect with exponential backoff when the socket goes away; false: fail fast. */
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number } | false;
  logger?: Logger;
  /** Call durations and errors by method and kind; the process-wide metrics by default. */
  metrics?: Metrics;
}

export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * SPDK reads requests into a fixed 32 KiB buffer (SPDK_JSONRPC_RECV_BUF_SIZE); when it fills
 * with an incomplete request, its recv() of 0 bytes reads as EOF and the connection is
 * closed, failing every other call in flight with it.
 */
export const MAX_REQUEST_BYTES = 32 * 1024;
/** Code carried by errors raised on this side of the socket (SPDK never sends 0). */
export const LOCAL_ERROR_CODE = 0;
export const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_INITIAL_DELAY_MS = 100;
const DEFAULT_MAX_DELAY_MS = 5_000;

type State = 'idle' | 'connecting' | 'connected' | 'waiting' | 'closed';

interface InFlight {
  method: string;
  fail(err: SpdkError): void;
  /** A well-formed reply (result or error) arrived for this call. */
  settle(result: unknown, error: JSONRPCErrorResponse['error'] | undefined): void;
}

function localError(method: string, kind: SpdkError['kind'], message: string, context: Record<string, unknown> = {}): SpdkError {
  return new SpdkError(method, LOCAL_ERROR_CODE, message, kind, { local: true, ...context });
}

/** Drop undefined members; no members at all means "send no params" (SPDK rejects `{}` on no-param methods). */
function normalizeParams(params: Record<string, unknown> | undefined): Record<string, unknown> | undefined {
  if (params === undefined || params === null) return undefined;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(params)) if (v !== undefined) out[k] = v;
  return Object.keys(out).length === 0 ? undefined : out;
}

const msSince = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;

/** Replies can be large (every bdev of a node): a debug line keeps the first 8 KiB. */
const MAX_LOGGED_RESULT = 8 * 1024;
function excerpt(result: unknown): unknown {
  const text = JSON.stringify(result) ?? 'null';
  return text.length <= MAX_LOGGED_RESULT ? result : { truncated: true, bytes: text.length, head: text.slice(0, MAX_LOGGED_RESULT) };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * One call waiting for its reply. A class rather than per-call closures: at tens of thousands
 * of pipelined calls per second, the closures were a visible share of the client's CPU.
 */
class PendingCall implements InFlight {
  settled = false;
  timer?: NodeJS.Timeout;
  onAbort?: () => void;

  constructor(
    private readonly client: SpdkRpcClient,
    readonly method: string,
    readonly id: number,
    private readonly signal: AbortSignal | undefined,
    private readonly resolve: (v: unknown) => void,
    private readonly reject: (e: SpdkError) => void,
  ) {}

  private finish(): boolean {
    if (this.settled) return false;
    this.settled = true;
    clearTimeout(this.timer);
    if (this.onAbort) this.signal?.removeEventListener('abort', this.onAbort);
    this.client.forget(this.id);
    return true;
  }

  fail(err: SpdkError): void {
    if (this.finish()) this.reject(err);
  }

  settle(result: unknown, error: JSONRPCErrorResponse['error'] | undefined): void {
    if (!this.finish()) return;
    if (error) this.reject(new SpdkError(this.method, error.code, error.message, classifySpdkError(error.code, error.message), { id: this.id, data: error.data }));
    else this.resolve(result);
  }
}

function onCallTimeout(client: SpdkRpcClient, call: PendingCall, timeoutMs: number): void {
  client.timedOut(call, timeoutMs);
}

export class SpdkRpcClient extends EventEmitter {
  readonly socketPath: string;
  private readonly timeoutMs: number;
  private readonly reconnectPolicy: { initialDelayMs: number; maxDelayMs: number } | false;
  private readonly log: Logger;
  private readonly inFlight = new Map<JSONRPCID, InFlight>();
  private nextId = 1;
  private state: State = 'idle';
  private socket?: net.Socket;
  private scanner = new JsonStreamScanner();
  private lastDataAt = 0;
  private retryTimer?: NodeJS.Timeout;
  private attempt = 0;
  private corked = false;
  private lastConnectError?: Error;
  private readonly metrics: Metrics;

  constructor(opts: SpdkRpcClientOptions) {
    super();
    this.socketPath = opts.socketPath;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.reconnectPolicy =
      opts.reconnect === false
        ? false
        : {
            initialDelayMs: opts.reconnect?.initialDelayMs ?? DEFAULT_INITIAL_DELAY_MS,
            maxDelayMs: opts.reconnect?.maxDelayMs ?? DEFAULT_MAX_DELAY_MS,
          };
    this.log = (opts.logger ?? silentLogger).child({ component: 'spdk-rpc', socket: opts.socketPath });
    this.metrics = opts.metrics ?? defaultMetrics();
    // Waiters for 'connected' are many (every call made while disconnected).
    this.setMaxListeners(0);
  }

  get connected(): boolean {
    return this.state === 'connected';
  }

  /** Number of calls waiting for a reply (for metrics and tests). */
  get pending(): number {
    return this.inFlight.size;
  }

  /**
   * Resolves once connected. With reconnect on, keeps retrying (with backoff) until it
   * succeeds or close() is called; with reconnect off, the first failure rejects.
   */
  async connect(): Promise<void> {
    if (this.state === 'closed') throw localError('connect', 'transport', 'client is closed');
    if (this.state === 'connected') return;
    // An explicit connect() dials again even when automatic reconnect is off.
    if (this.state === 'idle' || (this.state === 'waiting' && this.reconnectPolicy === false)) this.dial();
    // The reconnect timer is unref'd (an idle client must not keep a process alive), so a
    // caller awaiting connect() while spdk_tgt is down would see its process exit silently
    // with code 0: hold the event loop open for as long as someone waits here.
    const keepAlive = setInterval(() => undefined, 60_000);
    try {
      await this.waitConnected('connect', undefined, undefined);
    } finally {
      clearInterval(keepAlive);
    }
  }

  async close(): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearTimeout(this.retryTimer);
    this.failAll('client closed');
    this.emit('closed');
    const socket = this.socket;
    this.socket = undefined;
    if (socket && !socket.destroyed) {
      await new Promise<void>((resolve) => {
        socket.once('close', () => resolve());
        socket.destroy();
      });
    }
  }

  async call(method: string, params?: Record<string, unknown>, opts: CallOptions = {}): Promise<unknown> {
    const t0 = process.hrtime.bigint();
    // At debug level every call and its reply is one log line, so a failure on a real target
    // can be read from the agent's log instead of being reconstructed from outside.
    const trace = this.log.isLevelEnabled('debug');
    try {
      const result = await this.callOnce(method, params, opts);
      if (trace) this.log.debug({ event: 'rpc', method, params: normalizeParams(params), ms: msSince(t0), result: excerpt(result) }, 'SPDK RPC');
      return result;
    } catch (e) {
      this.metrics.spdkRpcErrors.inc({ method, kind: e instanceof SpdkError ? e.kind : 'internal' });
      if (trace) {
        const error = e instanceof SpdkError ? { code: e.code, message: e.rpcMessage, kind: e.kind } : { message: String(e) };
        this.log.debug({ event: 'rpc', method, params: normalizeParams(params), ms: msSince(t0), error }, 'SPDK RPC failed');
      }
      throw e;
    } finally {
      this.metrics.spdkRpcDuration.observe({ method }, secondsSince(t0));
    }
  }

  private async callOnce(method: string, params: Record<string, unknown> | undefined, opts: CallOptions): Promise<unknown> {
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    const signal = opts.signal;
    if (signal?.aborted) throw this.cancelled(method, signal);
    if (this.state === 'closed') throw localError(method, 'transport', 'client is closed');

    const id = this.nextId++;
    const request: JSONRPCRequest = { jsonrpc: '2.0', method, id };
    const p = normalizeParams(params);
    if (p !== undefined) request.params = p;
    const bytes = Buffer.from(JSON.stringify(request), 'utf8');
    if (bytes.length > MAX_REQUEST_BYTES) {
      throw localError(
        method,
        'invalidParams',
        `request is ${bytes.length} bytes, over SPDK's limit of ${MAX_REQUEST_BYTES} bytes (SPDK would drop the connection)`,
        { bytes: bytes.length, limit: MAX_REQUEST_BYTES },
      );
    }

    // One deadline for the whole call: waiting for a connection counts against it.
    const deadline = Date.now() + timeoutMs;
    if (this.state !== 'connected') {
      if (this.state === 'idle') this.dial();
      await this.waitConnected(method, deadline, signal, timeoutMs);
    }
    return this.exchange(method, id, bytes, deadline, timeoutMs, signal);
  }

  private exchange(
    method: string,
    id: number,
    bytes: Buffer,
    deadline: number,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<unknown> {
    return new Promise<unknown>((resolve, reject) => {
      const call = new PendingCall(this, method, id, signal, resolve, reject);
      this.inFlight.set(id, call);
      call.timer = setTimeout(onCallTimeout, Math.max(0, deadline - Date.now()), this, call, timeoutMs);
      if (signal) {
        call.onAbort = () => call.fail(this.cancelled(method, signal));
        signal.addEventListener('abort', call.onAbort, { once: true });
      }
      if (this.state !== 'connected') {
        call.fail(localError(method, 'transport', 'connection to SPDK lost before the request was sent'));
        return;
      }
      try {
        this.write(bytes);
      } catch (e) {
        call.fail(localError(method, 'internal', `request failed: ${String(e)}`));
      }
    });
  }

  /** @internal Called by a PendingCall when it settles: a late real reply is then dropped. */
  forget(id: number): void {
    this.inFlight.delete(id);
  }

  /** @internal A call's deadline passed. */
  timedOut(call: PendingCall, timeoutMs: number): void {
    call.fail(localError(call.method, 'timeout', `no reply within ${timeoutMs}ms`, { timeoutMs, id: call.id }));
    this.resetIfStuck(timeoutMs);
  }

  private cancelled(method: string, signal: AbortSignal): SpdkError {
    const reason: unknown = signal.reason;
    const why = reason instanceof Error ? reason.message : String(reason ?? 'aborted');
    return localError(method, 'timeout', `cancelled by caller: ${why}`, { cancelled: true });
  }

  private write(bytes: Buffer): void {
    const socket = this.socket;
    if (!socket || this.state !== 'connected') throw new Error('not connected');
    // Coalesce the requests issued in one tick into one syscall; each request stays whole
    // and SPDK parses several requests from one read (see the recording).
    if (!this.corked) {
      this.corked = true;
      socket.cork();
      process.nextTick(() => {
        this.corked = false;
        socket.uncork();
      });
    }
    socket.write(bytes);
  }

  private waitConnected(method: string, deadline: number | undefined, signal: AbortSignal | undefined, timeoutMs?: number): Promise<void> {
    if (this.state === 'connected') return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = (): void => {
        clearTimeout(timer);
        this.off('connected', onConnected);
        this.off('connectFailed', onConnectFailed);
        this.off('closed', onClosed);
        signal?.removeEventListener('abort', onAbort);
      };
      const onConnected = (): void => {
        cleanup();
        resolve();
      };
      const onConnectFailed = (err: Error): void => {
        // Only final when there is no retry to wait for.
        if (this.reconnectPolicy !== false) return;
        cleanup();
        reject(localError(method, 'transport', `cannot connect to ${this.socketPath}: ${err.message}`, { cause: err.message }));
      };
      const onClosed = (): void => {
        cleanup();
        reject(localError(method, 'transport', 'client closed'));
      };
      const onAbort = (): void => {
        cleanup();
        reject(this.cancelled(method, signal as AbortSignal));
      };
      this.on('connected', onConnected);
      this.on('connectFailed', onConnectFailed);
      this.on('closed', onClosed);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (deadline !== undefined) {
        timer = setTimeout(() => {
          cleanup();
          const last = this.lastConnectError ? `: ${this.lastConnectError.message}` : '';
          reject(
            localError(method, 'timeout', `no reply within ${timeoutMs}ms (not connected to ${this.socketPath}${last})`, {
              timeoutMs,
              connected: false,
            }),
          );
        }, Math.max(0, deadline - Date.now()));
      }
      // With reconnect off and nothing dialing, nobody would ever connect: fail now.
      if (this.reconnectPolicy === false && this.state === 'waiting') {
        onConnectFailed(this.lastConnectError ?? new Error('not connected'));
      }
    });
  }

  private dial(): void {
    if (this.state === 'closed') return;
    this.state = 'connecting';
    const socket = net.createConnection(this.socketPath);
    this.socket = socket;
    this.scanner = new JsonStreamScanner();
    let wasConnected = false;
    socket.once('connect', () => {
      if (this.socket !== socket) return;
      wasConnected = true;
      this.state = 'connected';
      this.attempt = 0;
      this.lastConnectError = undefined;
      this.log.info({ event: 'connected' }, 'connected to SPDK');
      this.emit('connected');
    });
    socket.on('data', (chunk: Buffer) => {
      if (this.socket === socket) this.onData(socket, chunk);
    });
    socket.on('error', (err: Error) => {
      if (this.socket !== socket) return;
      if (wasConnected) this.log.warn({ event: 'socketError', err: err.message }, 'SPDK socket error');
      else this.lastConnectError = err;
    });
    socket.once('close', () => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      if (this.state === 'closed') return;
      if (wasConnected) {
        this.log.warn({ event: 'disconnected', inFlight: this.inFlight.size }, 'SPDK connection lost');
        this.failAll('connection to SPDK lost while waiting for the reply');
        this.emit('disconnected', { reason: 'closed' });
      } else {
        const err = this.lastConnectError ?? new Error('connection closed');
        this.log.debug({ event: 'connectFailed', err: err.message, attempt: this.attempt }, 'cannot connect to SPDK');
        this.emit('connectFailed', err);
      }
      this.scheduleReconnect();
    });
  }

  private scheduleReconnect(): void {
    if (this.state === 'closed') return;
    this.state = 'waiting';
    if (this.reconnectPolicy === false) return;
    const { initialDelayMs, maxDelayMs } = this.reconnectPolicy;
    this.attempt++;
    const delay = backoffMs(this.attempt, { initialMs: initialDelayMs, maxMs: maxDelayMs });
    this.retryTimer = setTimeout(() => this.dial(), delay);
    this.retryTimer.unref();
  }

  /**
   * A reply cut short (a truncated value, then silence for a whole call deadline) would
   * swallow every later reply into that value: no call on this connection could succeed
   * again. Start over on a new connection, as for a reply that cannot be parsed.
   */
  private resetIfStuck(timeoutMs: number): void {
    if (this.scanner.buffered === 0 || Date.now() - this.lastDataAt < timeoutMs) return;
    this.log.error({ event: 'truncatedReply', buffered: this.scanner.buffered }, 'incomplete reply from SPDK; connection reset');
    this.failAll('incomplete reply from SPDK; connection reset');
    this.socket?.destroy();
  }

  private onData(socket: net.Socket, chunk: Buffer): void {
    this.lastDataAt = Date.now();
    const { values, error } = this.scanner.push(chunk);
    for (const v of values) this.onMessage(v);
    if (error) {
      // A stream we cannot parse cannot be resynchronised: start over on a new connection.
      this.log.error({ event: 'malformedReply', err: error.message, excerpt: error.excerpt }, 'malformed reply from SPDK');
      this.failAll(`malformed reply from SPDK (${error.message}); connection reset`);
      socket.destroy();
    }
  }

  private onMessage(msg: unknown): void {
    if (!isObject(msg) || !('id' in msg)) {
      this.log.warn({ event: 'unexpectedMessage', excerpt: JSON.stringify(msg).slice(0, 200) }, 'SPDK sent something that is not a reply');
      return;
    }
    const id = msg.id as JSONRPCID;
    const entry = typeof id === 'number' || typeof id === 'string' ? this.inFlight.get(id) : undefined;
    if (!entry) {
      // A reply to a call that timed out or was cancelled, or an id-less error (-32600).
      this.log.debug({ event: 'unmatchedReply', id, excerpt: JSON.stringify(msg).slice(0, 200) }, 'dropping reply with no waiting call');
      return;
    }
    const hasResult = 'result' in msg && msg.result !== undefined;
    const error = msg.error;
    if (msg.jsonrpc !== '2.0') {
      entry.fail(localError(entry.method, 'internal', `malformed reply: jsonrpc: expected "2.0", got ${JSON.stringify(msg.jsonrpc)}`, { field: 'jsonrpc' }));
    } else if (error !== undefined) {
      if (!isObject(error) || typeof error.code !== 'number' || typeof error.message !== 'string') {
        entry.fail(localError(entry.method, 'internal', 'malformed reply: error: expected {code: number, message: string}', { field: 'error' }));
        return;
      }
      entry.settle(undefined, { code: error.code, message: error.message, data: error.data });
    } else if (hasResult) {
      entry.settle(msg.result, undefined);
    } else {
      entry.fail(localError(entry.method, 'internal', 'malformed reply: has neither result nor error', { field: 'result' }));
    }
  }

  private failAll(message: string): void {
    for (const entry of [...this.inFlight.values()]) entry.fail(localError(entry.method, 'transport', message));
  }
}
