/**
 * A scripted stand-in for spdk_tgt's RPC socket: answers from the v24.01 recording, and can
 * hold replies and release them in any order, delay, drop, send garbage or close.
 */
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { JsonStreamScanner } from '../../src/spdk/framing.js';
import { REPO_ROOT } from './cli.js';

export interface RecordedRequest {
  jsonrpc: string;
  method: string;
  id?: number | string;
  params?: Record<string, unknown>;
}
export interface RecordedResponse {
  jsonrpc: string;
  id: number | string | null;
  result?: unknown;
  error?: { code: number; message: string };
}
export interface TranscriptEntry {
  note: string;
  request?: RecordedRequest;
  request_raw?: string;
  response?: RecordedResponse;
  outcome?: string;
}

export const TRANSCRIPT_PATH = path.join(REPO_ROOT, 'test', 'fixtures', 'spdk', 'v24.01-rpc-transcript.jsonl');

export function loadTranscript(): TranscriptEntry[] {
  return readFileSync(TRANSCRIPT_PATH, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as TranscriptEntry);
}

/** First recorded entry whose note matches; throws so that a renamed note fails loudly. */
export function recorded(note: string): TranscriptEntry {
  const e = loadTranscript().find((x) => x.note === note);
  if (!e) throw new Error(`no transcript entry with note "${note}"`);
  return e;
}

export interface ReceivedRequest {
  raw: string;
  request: RecordedRequest;
}

export type FakeAction =
  | { result: unknown }
  | { error: { code: number; message: string } }
  /** Bytes written as they are (garbage, a reply with another id, ...). */
  | { raw: string }
  | { drop: true }
  | { close: true };

export type FakeHandler = (req: RecordedRequest) => FakeAction | undefined;

export class FakeSpdk {
  readonly received: ReceivedRequest[] = [];
  /** Return undefined to fall back to the recorded reply for the method. */
  handler?: FakeHandler;
  /** Delay every reply by this many ms. */
  delayMs = 0;
  /** Hold replies until releaseHeld(). */
  hold = false;
  /** Write each reply in pieces of this many bytes (exercises the client's scanner). */
  chunkBytes = 0;
  private held: Array<{ socket: net.Socket; bytes: string }> = [];
  private pollTimer?: NodeJS.Timeout;
  private readonly sockets = new Set<net.Socket>();
  private readonly recordedResults = new Map<string, unknown>();
  private waiters: Array<() => void> = [];

  private constructor(
    readonly socketPath: string,
    private readonly dir: string,
    private readonly server: net.Server,
  ) {
    for (const e of loadTranscript()) {
      if (e.request && e.response && 'result' in e.response && !this.recordedResults.has(e.request.method)) {
        this.recordedResults.set(e.request.method, e.response.result);
      }
    }
  }

  static async start(): Promise<FakeSpdk> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fk-'));
    const socketPath = path.join(dir, 's.sock');
    const server = net.createServer();
    const fake = new FakeSpdk(socketPath, dir, server);
    server.on('connection', (s) => fake.onConnection(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
    return fake;
  }

  /**
   * Answer only every `ms` milliseconds, all replies due at once, like spdk_tgt's RPC poller
   * (4 ms in v24.01). 0 turns it off.
   */
  pollEvery(ms: number): void {
    clearInterval(this.pollTimer);
    this.pollTimer = undefined;
    this.hold = ms > 0;
    if (ms > 0) this.pollTimer = setInterval(() => this.releaseHeld('fifo'), ms);
    else this.releaseHeld('fifo');
  }

  get connections(): number {
    return this.sockets.size;
  }

  /** Resolves once at least n requests have arrived in total. */
  async waitForRequests(n: number): Promise<void> {
    while (this.received.length < n) await new Promise<void>((r) => this.waiters.push(r));
  }

  /** Send held replies, in reverse arrival order by default, all in one write per socket. */
  releaseHeld(order: 'reverse' | 'fifo' = 'reverse'): void {
    const held = order === 'reverse' ? [...this.held].reverse() : [...this.held];
    this.held = [];
    const bySocket = new Map<net.Socket, string>();
    for (const h of held) bySocket.set(h.socket, (bySocket.get(h.socket) ?? '') + h.bytes);
    for (const [socket, bytes] of bySocket) this.write(socket, bytes);
  }

  sendRawToAll(bytes: string): void {
    for (const s of this.sockets) s.write(bytes);
  }

  closeConnections(): void {
    for (const s of this.sockets) s.destroy();
  }

  async stop(): Promise<void> {
    clearInterval(this.pollTimer);
    this.closeConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await fs.rm(this.dir, { recursive: true, force: true });
  }

  private onConnection(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    const scanner = new JsonStreamScanner();
    socket.on('data', (chunk: Buffer) => {
      const { values, error } = scanner.push(chunk);
      for (const v of values) this.onRequest(socket, v as RecordedRequest);
      // Like spdk_tgt: bytes that are not JSON close the connection without an answer.
      if (error) socket.destroy();
    });
  }

  private onRequest(socket: net.Socket, request: RecordedRequest): void {
    this.received.push({ raw: JSON.stringify(request), request });
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
    const action = this.handler?.(request) ?? this.defaultAction(request);
    if ('drop' in action) return;
    if ('close' in action) {
      socket.destroy();
      return;
    }
    const bytes =
      'raw' in action
        ? action.raw
        : JSON.stringify({ jsonrpc: '2.0', id: request.id ?? null, ...action }) + '\n';
    if (this.hold) this.held.push({ socket, bytes });
    else if (this.delayMs > 0) setTimeout(() => this.write(socket, bytes), this.delayMs);
    else this.write(socket, bytes);
  }

  private defaultAction(request: RecordedRequest): FakeAction {
    if (this.recordedResults.has(request.method)) return { result: this.recordedResults.get(request.method) };
    return { error: { code: -32601, message: 'Method not found' } };
  }

  private write(socket: net.Socket, bytes: string): void {
    if (socket.destroyed) return;
    if (this.chunkBytes <= 0) {
      // One syscall for all replies of a tick, as a polling target would send them.
      if (!socket.writableCorked) {
        socket.cork();
        process.nextTick(() => socket.uncork());
      }
      socket.write(bytes);
      return;
    }
    const buf = Buffer.from(bytes);
    for (let i = 0; i < buf.length; i += this.chunkBytes) socket.write(buf.subarray(i, i + this.chunkBytes));
  }
}
