import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { z } from 'zod';
import { backoffMs } from '../../backoff.js';
import type { Logger } from '../../log.js';
import type { ListenAddress } from '../remote.js';
import { BackendError, type BackendHealth } from '../types.js';
import { QsdProcess } from './daemon.js';
import { toBackendError } from './errors.js';
import { QmpClient } from './qmp.js';

/**
 * The daemon bring-up story of the qsd driver: spawn (when managed) and supervise
 * qemu-storage-daemon, keep one QMP connection, restart/reconnect with backoff, run commands
 * and serialise the driver's read-then-write changes. Emits 'connected' (daemon reachable,
 * possibly a new process) and 'disconnected' (once per outage).
 */

const BlockExportInfoSchema = z.array(
  z.object({ id: z.string(), type: z.string(), 'node-name': z.string(), 'shutting-down': z.boolean() }).passthrough(),
);
const BlockNodeInfoSchema = z.array(
  z
    .object({ 'node-name': z.string().optional(), file: z.string(), ro: z.boolean(), drv: z.string() })
    .passthrough()
    .transform((n) => ({ ...n, file: plainFileName(n.file) })),
);

/**
 * A format node whose backing is not the one its header names (a disk over a lazy golden's
 * copy-on-read filter, or over a golden switched to another source: retarget.ts) is reported
 * with a `json:{...}` file name; its own file is still the plain one at `file.filename`, and
 * that is what every lookup by disk file means.
 */
export function plainFileName(file: string): string {
  if (!file.startsWith('json:')) return file;
  try {
    const o = JSON.parse(file.slice('json:'.length)) as { file?: { driver?: unknown; filename?: unknown } };
    return o.file?.driver === 'file' && typeof o.file.filename === 'string' ? o.file.filename : file;
  } catch {
    return file;
  }
}
/** The fields of QEMU's BlockJobInfo this driver reads (all always present since QEMU 2.x). */
const BlockJobInfoSchema = z.array(
  z.object({ device: z.string(), len: z.number(), offset: z.number(), paused: z.boolean(), busy: z.boolean() }).passthrough(),
);
const VersionInfoSchema = z.object({
  qemu: z.object({ major: z.number(), minor: z.number(), micro: z.number() }),
  package: z.string(),
});

export type BlockNodeInfo = z.output<typeof BlockNodeInfoSchema>[number];
export type BlockExportInfo = z.output<typeof BlockExportInfoSchema>[number];
export type BlockJobInfo = z.output<typeof BlockJobInfoSchema>[number];

const MAX_RESTART_DELAY_MS = 5_000;

export interface QsdSessionOptions {
  qmpSocket: string;
  /** Spawn and supervise this daemon; undefined for an unmanaged daemon. */
  process?: { binary: string; pidFile: string };
  restartDelayMs: number;
  log: Logger;
}

export class QsdSession extends EventEmitter {
  readonly qmpSocket: string;
  readonly log: Logger;
  private readonly process: QsdProcess | undefined;
  private client: QmpClient | undefined;
  private closing = false;
  private started = false;
  /** Whether 'connected' was the last event emitted: 'disconnected' is sent once per outage. */
  private up = false;
  /** Restarts failed in a row since the daemon last came up. */
  private restartFailures = 0;
  private restartTimer: NodeJS.Timeout | undefined;
  /** Disk and controller changes run one at a time: they read-then-write shared state. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Where this daemon's NBD server listens (migration exports); a new daemon has none. */
  nbdServer: ListenAddress | undefined;

  constructor(private readonly opts: QsdSessionOptions) {
    super();
    this.qmpSocket = opts.qmpSocket;
    this.log = opts.log;
    if (opts.process) {
      this.process = new QsdProcess({ ...opts.process, qmpSocket: this.qmpSocket, logger: this.log });
      this.process.on('exit', () => this.onDaemonLost('daemon exited'));
    }
  }

  get connected(): boolean {
    return this.client !== undefined && !this.client.isClosed;
  }

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    try {
      await this.bringUp();
    } catch (err) {
      await this.close();
      throw toBackendError(err, `start qemu-storage-daemon (QMP ${this.qmpSocket})`);
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    clearTimeout(this.restartTimer);
    this.client?.close();
    this.client = undefined;
    await this.process?.stop();
  }

  private async bringUp(): Promise<void> {
    if (this.process) await this.process.start();
    const client = await this.connect();
    if (this.closing) {
      // close() ran while we were starting: it may have missed the daemon we just made.
      client.close();
      await this.process?.stop();
      return;
    }
    client.on('close', () => {
      if (this.client !== client || this.closing) return;
      this.client = undefined;
      // A managed daemon that lost its monitor is useless: kill it, the exit restarts it.
      if (this.process) void this.process.stop(0);
      else this.onDaemonLost('QMP connection closed');
    });
    client.on('event', (e) => this.emit('qmp-event', e));
    this.instance = await markInstance(client).catch((err: unknown) => {
      this.log.warn({ event: 'qsd.instance-unknown', err: (err as Error).message }, 'cannot mark the daemon instance; a reconnect will count as a restart');
      return undefined;
    });
    this.client = client;
    if (this.process) this.nbdServer = undefined;
    this.restartFailures = 0;
    const v = client.greeting?.version.qemu;
    this.log.info({ event: 'qsd.connected', version: v ? `${v.major}.${v.minor}.${v.micro}` : undefined }, 'connected');
    this.up = true;
    this.emit('connected');
  }

  /** The socket file exists a moment before the daemon listens on it: retry a refusal briefly. */
  private async connect(): Promise<QmpClient> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await QmpClient.connect(this.qmpSocket, { logger: this.log });
      } catch (err) {
        const refused = (err as { cause?: { code?: string } }).cause?.code === 'ECONNREFUSED';
        if (!refused || attempt >= 40 || this.closing) throw err;
        await new Promise((r) => setTimeout(r, 25));
      }
    }
  }

  private onDaemonLost(reason: string): void {
    const client = this.client;
    this.client = undefined;
    client?.close();
    if (this.closing || !this.started) return;
    this.log.warn({ event: 'qsd.disconnected', reason }, 'qemu-storage-daemon lost');
    if (this.up) {
      this.up = false;
      this.emit('disconnected');
    }
    this.scheduleRestart();
  }

  private scheduleRestart(): void {
    if (this.closing || this.restartTimer) return;
    this.restartFailures++;
    const delay = backoffMs(this.restartFailures, { initialMs: this.opts.restartDelayMs, maxMs: MAX_RESTART_DELAY_MS });
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      this.bringUp().catch((err: unknown) => {
        this.log.warn({ event: 'qsd.restart.failed', err: (err as Error).message }, 'restart failed; retrying');
        // A managed daemon that started but failed later exits and reschedules by itself.
        if (!this.process?.pid) this.scheduleRestart();
        else void this.process.stop(0);
      });
    }, delay);
  }

  qmp(): QmpClient {
    if (!this.client || this.client.isClosed) {
      throw new BackendError(`qemu-storage-daemon at ${this.qmpSocket} is not connected`, 'transport');
    }
    return this.client;
  }

  async exec<T>(command: string, args: Record<string, unknown> | undefined, what: string): Promise<T> {
    try {
      return await this.qmp().execute<T>(command, args);
    } catch (err) {
      throw toBackendError(err, what);
    }
  }

  serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }

  async health(): Promise<BackendHealth> {
    try {
      const v = VersionInfoSchema.parse(await this.qmp().execute('query-version', undefined, { timeoutMs: 5_000 }));
      return { ok: true, kind: 'qsd', version: `${v.qemu.major}.${v.qemu.minor}.${v.qemu.micro}`, ...(this.instance !== undefined ? { instance: this.instance } : {}) };
    } catch (err) {
      return { ok: false, kind: 'qsd', message: err instanceof Error ? err.message : String(err) };
    }
  }

  /** The daemon process connected now (see markInstance), when known. */
  instance: string | undefined;

  async blockNodes(): Promise<BlockNodeInfo[]> {
    return BlockNodeInfoSchema.parse(await this.exec('query-named-block-nodes', { flat: true }, 'query-named-block-nodes'));
  }

  /** The block job `id` (QEMU calls it `device`), if it runs. */
  async blockJob(id: string): Promise<BlockJobInfo | undefined> {
    return BlockJobInfoSchema.parse(await this.exec('query-block-jobs', undefined, 'query-block-jobs')).find((j) => j.device === id);
  }

  async exports(): Promise<BlockExportInfo[]> {
    return BlockExportInfoSchema.parse(await this.exec('query-block-exports', undefined, 'query-block-exports'));
  }

  /** blockdev-del that treats "already gone" as done and waits out a short "in use". */
  async deleteNode(nodeName: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.exec('blockdev-del', { 'node-name': nodeName }, `close node ${nodeName}`);
        return;
      } catch (err) {
        if (err instanceof BackendError && err.kind === 'notFound') return;
        if (!(err instanceof BackendError && err.kind === 'busy') || attempt >= 50) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }
}

const INSTANCE_PREFIX = 'kspdk-instance-';

/**
 * Names the daemon process: a QOM object that only this process holds (a new daemon has none,
 * so it gets a new name). A QMP connection that drops and comes back to the same daemon finds
 * the same name: a reconnect is told from a restart without knowing the daemon's pid.
 */
async function markInstance(client: QmpClient): Promise<string> {
  // `/objects` exists only once some object was added: a daemon without it has no marker yet.
  const list = await client.execute<Array<{ name: string; type: string }>>('qom-list', { path: '/objects' }).catch(() => []);
  const found = list.find((o) => o.name.startsWith(INSTANCE_PREFIX));
  if (found) return found.name.slice(INSTANCE_PREFIX.length);
  const id = randomBytes(8).toString('hex');
  await client.execute('object-add', { 'qom-type': 'secret', id: `${INSTANCE_PREFIX}${id}`, data: '1' });
  return id;
}
