import fs from 'node:fs';
import net from 'node:net';
import type { Logger } from '../../src/log.js';
import { RpcError, JSONRPC_INTERNAL_ERROR, JSONRPC_INVALID_REQUEST, JSONRPC_METHOD_NOT_FOUND } from './errors.js';
import { JsonStreamScanner } from '../../src/spdk/framing.js';
import { decodeParams, methodFor, type MethodContext } from './methods.js';
import { Pending, type Json } from './model.js';

/** setTimeout's longest delay: a Pending without a timeout waits this long (and for stop()). */
const FOREVER_MS = 2 ** 31 - 1;

export type FaultAction = 'busy' | 'hang' | 'malformed' | 'close' | { code: number; message: string };
export interface FaultSpec {
  method: string;
  /** How many calls the fault applies to; default 1. */
  times?: number;
  action: FaultAction;
}

type Id = string | number | null;
interface Request {
  method: string;
  id: Id;
  notification: boolean;
  params: unknown;
}

const REQUEST_KEYS = new Set(['jsonrpc', 'method', 'id', 'params']);

/** SPDK's request decoding: anything but a well-formed object is an invalid request. */
function toRequest(v: unknown): Request | undefined {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return undefined;
  const o = v as Record<string, unknown>;
  if (Object.keys(o).some((k) => !REQUEST_KEYS.has(k))) return undefined;
  if (o.jsonrpc !== '2.0' || typeof o.method !== 'string') return undefined;
  const id = o.id;
  if (id !== undefined && id !== null && typeof id !== 'string' && typeof id !== 'number') return undefined;
  const params = o.params;
  if (params !== undefined && (params === null || typeof params !== 'object')) return undefined;
  return { method: o.method, id: id ?? null, notification: !('id' in o), params };
}

export class Faults {
  private readonly list: Array<{ method: string; remaining: number; action: FaultAction }> = [];

  add(f: FaultSpec): void {
    this.list.push({ method: f.method, remaining: f.times ?? 1, action: f.action });
  }

  clear(): void {
    this.list.length = 0;
  }

  take(method: string): FaultAction | undefined {
    const f = this.list.find((x) => x.method === method && x.remaining > 0);
    if (!f) return undefined;
    f.remaining--;
    if (f.remaining <= 0) this.list.splice(this.list.indexOf(f), 1);
    return f.action;
  }
}

/**
 * SPDK's JSON-RPC server on a unix socket, with its framing and its hazards: values are
 * read back to back without delimiters, every response ends with "\n", a top-level array is
 * answered -32600 with id null, unparsable input closes the connection unanswered, and what
 * follows a notification in the same read is dropped unanswered (the recording shows the
 * request after a notification never being answered). With a poll interval, received bytes
 * are only looked at on poller ticks, as SPDK's RPC poller does.
 */
export class RpcServer {
  private server: net.Server | undefined;
  private readonly conns = new Set<Connection>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly socketPath: string,
    private readonly pollIntervalMs: number,
    private readonly ctx: MethodContext,
    readonly faults: Faults,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    await removeStaleSocket(this.socketPath);
    const server = net.createServer((sock) => {
      const conn = new Connection(sock, this, this.logger, this.pollIntervalMs === 0);
      this.conns.add(conn);
      sock.on('close', () => this.conns.delete(conn));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    if (this.pollIntervalMs > 0) {
      this.timer = setInterval(() => {
        const ticks = this.tickWaiters.splice(0);
        for (const wake of ticks) wake();
        for (const c of this.conns) c.drain();
      }, this.pollIntervalMs);
    }
  }

  private readonly tickWaiters: Array<() => void> = [];

  private async polls(n: number): Promise<void> {
    for (let i = 0; i < n; i++) await this.nextPoll();
  }

  /** The next poller tick (SPDK completes metadata operations on a later poll). */
  nextPoll(): Promise<void> {
    if (this.pollIntervalMs > 0 && this.timer) return new Promise((resolve) => this.tickWaiters.push(resolve));
    return new Promise((resolve) => setImmediate(resolve));
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    for (const wake of this.tickWaiters.splice(0)) wake();
    for (const c of this.conns) c.destroy();
    this.conns.clear();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    fs.rmSync(this.socketPath, { force: true });
  }

  /**
   * Runs one request. Metadata operations (lvol create/snapshot/clone/inflate/resize/delete)
   * apply at once but complete, and answer, on a later poll: until then their blobs are locked
   * (a second operation on one gets EBUSY) and new lvols have no bdev. A `Pending` answer
   * waits for its condition.
   */
  async execute(req: Request): Promise<{ result: Json } | { error: RpcError }> {
    const model = this.ctx.model;
    const def = methodFor(req.method, model.profile);
    if (!def) return { error: new RpcError(JSONRPC_METHOD_NOT_FOUND, 'Method not found') };
    try {
      const params = decodeParams(req.method, def, req.params);
      let run;
      let completion: Promise<void> | undefined;
      try {
        run = def.params === 'none' ? def.run(this.ctx) : def.run(this.ctx, params as never);
      } finally {
        const taken = model.takeLocks();
        const polls = model.takePolls();
        if (taken.length > 0) {
          if (run === undefined) model.completeOperation(taken);
          else completion = this.polls(polls).then(() => model.completeOperation(taken));
        }
      }
      let result = await run;
      // The answer of a metadata operation goes out with its completion, not before.
      if (completion) await completion;
      if (result instanceof Pending) {
        const pending = result;
        const done = await this.ctx.waitFor(pending.done, pending.timeoutMs ?? FOREVER_MS);
        if (!done) {
          if (pending.onTimeout) throw pending.onTimeout;
          return { error: new RpcError(JSONRPC_INTERNAL_ERROR, 'target stopped') };
        }
        result = pending.result();
      }
      return { result };
    } catch (e) {
      if (e instanceof RpcError) return { error: e };
      this.logger.error({ event: 'rpc_handler_failed', method: req.method, err: String(e) }, 'handler failed');
      return { error: new RpcError(JSONRPC_INTERNAL_ERROR, String((e as Error).message ?? e)) };
    }
  }
}

/** spdk_tgt refuses to start on a socket another process serves; a stale file is replaced. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  if (!fs.existsSync(socketPath)) return;
  const alive = await new Promise<boolean>((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`RPC Unix domain socket path ${socketPath} in use by another process`);
  fs.rmSync(socketPath, { force: true });
}

class Connection {
  private readonly scanner = new JsonStreamScanner();
  /** Complete values not handled yet, grouped by the read they arrived in. */
  private reads: Array<{ values: unknown[]; broken: boolean }> = [];
  /** Requests started and not answered yet: SPDK answers each when it completes, in any order. */
  private readonly inflight = new Set<Promise<void>>();
  private closed = false;

  constructor(
    private readonly sock: net.Socket,
    private readonly server: RpcServer,
    private readonly logger: Logger,
    immediate: boolean,
  ) {
    sock.on('data', (chunk: Buffer) => {
      const r = this.scanner.push(chunk);
      this.reads.push({ values: r.values, broken: r.error !== undefined });
      if (immediate) this.drain();
    });
    sock.on('error', () => this.destroy());
    sock.on('close', () => {
      this.closed = true;
    });
  }

  destroy(): void {
    this.closed = true;
    this.sock.destroy();
  }

  /** Handles every complete value received so far. */
  drain(): void {
    for (let read = this.reads.shift(); read && !this.closed; read = this.reads.shift()) {
      for (const value of read.values) {
        const req = toRequest(value);
        if (!req) {
          this.enqueue(() => this.send(null, { error: new RpcError(JSONRPC_INVALID_REQUEST, 'Invalid request') }));
          continue;
        }
        this.enqueue(() => this.run(req));
        // As recorded: what follows a notification in the same read is never answered.
        if (req.notification) break;
      }
      if (read.broken) {
        this.logger.warn({ event: 'rpc_parse_error' }, 'JSON parse error: closing the connection');
        // Close once what was started before the bad bytes has answered.
        void Promise.allSettled([...this.inflight]).then(() => this.destroy());
        return;
      }
    }
  }

  /** Starts a request now (requests start in arrival order; they may complete out of order). */
  private enqueue(task: () => Promise<void> | void): void {
    const p = Promise.resolve()
      .then(task)
      .catch((e: unknown) => {
        this.logger.error({ event: 'rpc_connection_failed', err: String(e) }, 'connection task failed');
      })
      .finally(() => this.inflight.delete(p));
    this.inflight.add(p);
  }

  private async run(req: Request): Promise<void> {
    const fault = this.server.faults.take(req.method);
    if (fault !== undefined) {
      this.logger.info({ event: 'fault_injected', method: req.method, action: typeof fault === 'string' ? fault : 'error' }, 'injected fault');
      if (fault === 'hang') return;
      if (fault === 'close') return this.destroy();
      if (fault === 'malformed') {
        if (!this.closed) this.sock.write(`{"jsonrpc":"2.0","id":${JSON.stringify(req.id)},"result":\n`);
        return;
      }
      const err = fault === 'busy' ? new RpcError(-16, 'Device or resource busy') : new RpcError(fault.code, fault.message);
      if (!req.notification) this.send(req.id, { error: err });
      return;
    }
    const outcome = await this.server.execute(req);
    this.logger.debug({ event: 'rpc', method: req.method, ok: 'result' in outcome }, 'rpc handled');
    if (!req.notification) this.send(req.id, outcome);
  }

  private send(id: Id, outcome: { result: Json } | { error: RpcError }): void {
    if (this.closed) return;
    const body =
      'result' in outcome
        ? { jsonrpc: '2.0', id, result: outcome.result }
        : { jsonrpc: '2.0', id, error: { code: outcome.error.code, message: outcome.error.message } };
    this.sock.write(`${JSON.stringify(body)}\n`);
  }
}
