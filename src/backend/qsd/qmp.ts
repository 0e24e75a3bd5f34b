import { EventEmitter } from 'node:events';
import net from 'node:net';
import { z } from 'zod';
import { silentLogger, type Logger } from '../../log.js';

/**
 * A small QMP client (QEMU Machine Protocol: one JSON object per line over a unix socket).
 * The server greets with `{"QMP": {...}}`; the client must send `qmp_capabilities` before any
 * other command. Replies carry the `id` the command was sent with; asynchronous events
 * (`{"event": ..., "data": ..., "timestamp": ...}`) may arrive between them at any time.
 * Nothing here is specific to block exports, so NBD migration can reuse it.
 */

const QmpVersionSchema = z.object({
  qemu: z.object({ major: z.number(), minor: z.number(), micro: z.number() }),
  package: z.string(),
});

const GreetingSchema = z.object({
  QMP: z.object({ version: QmpVersionSchema, capabilities: z.array(z.string()) }),
});

const ErrorBodySchema = z.object({ class: z.string(), desc: z.string() });

// `z.unknown()` would also accept a missing key, so a success reply must really carry `return`.
const ReplySchema = z.union([
  z.object({ error: ErrorBodySchema, id: z.unknown().optional() }),
  z
    .object({ return: z.unknown(), id: z.unknown().optional() })
    .refine((o) => 'return' in o, { message: 'a reply carries "return" or "error"' }),
]);

const EventSchema = z.object({
  event: z.string(),
  data: z.record(z.unknown()).optional(),
  timestamp: z.object({ seconds: z.number(), microseconds: z.number() }).optional(),
});

export type QmpGreeting = z.output<typeof GreetingSchema>['QMP'];
export type QmpVersion = z.output<typeof QmpVersionSchema>;
export type QmpEvent = z.output<typeof EventSchema>;

export type QmpErrorKind = 'command' | 'timeout' | 'closed' | 'protocol';

/**
 * `kind: 'command'`: QEMU refused the command; `errorClass` and `desc` are QMP's (`GenericError`,
 * `DeviceNotFound`, ...). The other kinds are transport problems with no QMP class.
 */
export class QmpError extends Error {
  override readonly name = 'QmpError';
  constructor(
    readonly kind: QmpErrorKind,
    readonly command: string,
    readonly desc: string,
    readonly errorClass?: string,
    options?: { cause?: unknown },
  ) {
    super(`${command}: ${desc}${errorClass ? ` (${errorClass})` : ''}`, options);
  }
}

export interface QmpConnectOptions {
  /** Bound on connect + greeting + capabilities negotiation. Default 5 s. */
  timeoutMs?: number;
  /** Default bound on each command. Default 30 s. */
  commandTimeoutMs?: number;
  logger?: Logger;
}

interface Pending {
  id: string;
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: QmpError) => void;
  timer: NodeJS.Timeout;
}

/** Longest line accepted from the server; a peer that never sends a newline is broken. */
const MAX_LINE_BYTES = 64 * 1024 * 1024;

/** Emits 'event' (QmpEvent) and 'close' (QmpError | undefined). */
export class QmpClient extends EventEmitter {
  private buffer = '';
  private readonly pending = new Map<string, Pending>();
  private nextId = 1;
  private closed = false;
  private greetingWaiter: { resolve: (g: QmpGreeting) => void; reject: (e: QmpError) => void } | undefined;
  greeting: QmpGreeting | undefined;

  private constructor(
    private readonly socket: net.Socket,
    private readonly commandTimeoutMs: number,
    private readonly log: Logger,
  ) {
    super();
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.shutdown(new QmpError('closed', 'socket', err.message, undefined, { cause: err })));
    // The greeting waiter is installed at once by connect(), before any byte can arrive.
    socket.on('close', () => this.shutdown(new QmpError('closed', 'socket', 'connection closed')));
  }

  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 5_000;
    const log = (opts.logger ?? silentLogger).child({ qmp: path });
    const socket = net.createConnection({ path });
    const client = new QmpClient(socket, opts.commandTimeoutMs ?? 30_000, log);
    const timer = setTimeout(() => {
      client.shutdown(new QmpError('timeout', 'connect', `${path}: no QMP greeting within ${timeoutMs} ms`));
      socket.destroy();
    }, timeoutMs);
    try {
      client.greeting = await new Promise<QmpGreeting>((resolve, reject) => {
        if (client.closed) return reject(new QmpError('closed', 'connect', 'connection closed before the greeting'));
        client.greetingWaiter = { resolve, reject };
      });
      await client.execute('qmp_capabilities', undefined, { timeoutMs });
      return client;
    } catch (err) {
      client.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Runs one command; resolves with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closed) return Promise.reject(new QmpError('closed', command, 'connection closed'));
    const id = `c${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpError('timeout', command, `no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { id, command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.log.debug({ event: 'qmp.send', command, id }, 'qmp command');
      this.socket.write(`${JSON.stringify(msg)}\n`);
    });
  }

  /** Resolves with the first event named `name` that passes `match`, or rejects after the timeout. */
  waitForEvent(name: string, match: (e: QmpEvent) => boolean = () => true, timeoutMs = 10_000): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const onEvent = (e: QmpEvent): void => {
        if (e.event !== name || !match(e)) return;
        cleanup();
        resolve(e);
      };
      const onClose = (): void => {
        cleanup();
        reject(new QmpError('closed', `wait ${name}`, 'connection closed'));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new QmpError('timeout', `wait ${name}`, `no ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  close(): void {
    this.shutdown(new QmpError('closed', 'close', 'client closed'));
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    if (this.buffer.length > MAX_LINE_BYTES) {
      this.log.warn({ event: 'qmp.protocol', bytes: this.buffer.length }, 'QMP line too long; closing');
      this.shutdown(new QmpError('protocol', 'socket', `line longer than ${MAX_LINE_BYTES} bytes`));
      this.socket.destroy();
      return;
    }
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line) this.onLine(line);
    }
  }

  private onLine(line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      // One garbled line must not take the connection down: replies are matched by id.
      this.log.warn({ event: 'qmp.protocol', line: line.slice(0, 200) }, 'ignoring a line that is not JSON');
      return;
    }
    const greeting = GreetingSchema.safeParse(msg);
    if (greeting.success) {
      this.greetingWaiter?.resolve(greeting.data.QMP);
      this.greetingWaiter = undefined;
      return;
    }
    const event = EventSchema.safeParse(msg);
    if (event.success) {
      this.log.debug({ event: 'qmp.event', name: event.data.event }, 'qmp event');
      this.emit('event', event.data);
      return;
    }
    const reply = ReplySchema.safeParse(msg);
    if (!reply.success) {
      this.log.warn({ event: 'qmp.protocol', line: line.slice(0, 200) }, 'ignoring an unknown QMP message');
      return;
    }
    const pending = this.takePending(reply.data.id);
    if (!pending) {
      this.log.warn({ event: 'qmp.protocol', id: reply.data.id }, 'reply to no pending command');
      return;
    }
    clearTimeout(pending.timer);
    if ('error' in reply.data) {
      pending.reject(new QmpError('command', pending.command, reply.data.error.desc, reply.data.error.class));
    } else {
      pending.resolve(reply.data.return);
    }
  }

  /**
   * QEMU answers a request it could not parse (so could not read an id from) without an id;
   * commands run in order, so such a reply belongs to the oldest command still waiting.
   */
  private takePending(id: unknown): Pending | undefined {
    if (typeof id === 'string' && this.pending.has(id)) {
      const p = this.pending.get(id);
      this.pending.delete(id);
      return p;
    }
    if (id !== undefined) return undefined;
    const oldest = this.pending.values().next();
    if (oldest.done) return undefined;
    this.pending.delete(oldest.value.id);
    return oldest.value;
  }

  private shutdown(reason: QmpError): void {
    if (this.closed) return;
    this.closed = true;
    this.greetingWaiter?.reject(reason);
    this.greetingWaiter = undefined;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new QmpError(reason.kind, p.command, reason.desc, undefined, { cause: reason }));
    }
    this.pending.clear();
    this.emit('close', reason);
  }
}
