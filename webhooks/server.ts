/**
 * The webhook's HTTPS edge: TLS from mounted files (reloaded when they change), body limit,
 * health endpoints, graceful close. The decision itself is `mutate` (pure).
 */
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { silentLogger, type Logger } from '../src/log.js';
import { startStatusServer, type StatusServer } from '../src/metrics/server.js';
import { defaultMetrics, secondsSince, type Metrics } from '../src/metrics/metrics.js';
import { formatZodError } from '../src/api/errors.js';
import { AdmissionReviewRequestSchema, reviewResponse } from './admission-review.js';
import type { ImageCatalog } from './catalog.js';
import { mutate, type MutationConfig } from './mutate.js';
import { TLS_POLICY } from './tls.js';

export const MUTATE_PATH = '/mutate';
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;

export interface WebhookServerOptions {
  certFile: string;
  keyFile: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  catalog: ImageCatalog;
  config: MutationConfig;
  logger?: Logger;
  maxBodyBytes?: number;
  /** How long close() lets in-flight requests finish before cutting connections. */
  shutdownGraceMs?: number;
  /** The process-wide metrics by default. */
  metrics?: Metrics;
  /**
   * Where /metrics is served: its own plain-HTTP listener, never the admission port (which
   * the Service exposes to the whole cluster). Undefined: no metrics listener. 0: a free port.
   */
  metricsPort?: number;
  metricsHost?: string;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function sendText(res: ServerResponse, status: number, text: string, close = false): void {
  const headers: Record<string, string | number> = { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(text) };
  if (close) headers.connection = 'close';
  res.writeHead(status, headers);
  res.end(text);
}

function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) return Promise.reject(new HttpError(413, `request body larger than ${limit} bytes`));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        req.removeAllListeners('data');
        req.pause();
        reject(new HttpError(413, `request body larger than ${limit} bytes`));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks, size)));
    req.on('error', reject);
  });
}

export class WebhookServer {
  private readonly server: https.Server;
  private readonly logger: Logger;
  private readonly maxBody: number;
  private readonly metrics: Metrics;
  private watchers: FSWatcher[] = [];
  private reloadTimer: NodeJS.Timeout | undefined;
  private closing = false;
  /** Last cert+key text applied, to skip reloads that change nothing. */
  private tlsFingerprint = '';
  private metricsServer: StatusServer | undefined;

  private constructor(
    private readonly opts: WebhookServerOptions,
    cert: string,
    key: string,
  ) {
    this.logger = opts.logger ?? silentLogger;
    this.maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    this.metrics = opts.metrics ?? defaultMetrics();
    this.tlsFingerprint = cert + key;
    this.server = https.createServer({ cert, key, keepAlive: true, ...TLS_POLICY }, (req, res) => this.handle(req, res));
    // The API server reuses connections; don't let them linger past its own timeouts forever.
    this.server.keepAliveTimeout = 30_000;
  }

  static async start(opts: WebhookServerOptions): Promise<WebhookServer> {
    const [cert, key] = await Promise.all([readFile(opts.certFile, 'utf8'), readFile(opts.keyFile, 'utf8')]);
    const ws = new WebhookServer(opts, cert, key);
    await new Promise<void>((resolve, reject) => {
      ws.server.once('error', reject);
      ws.server.listen(opts.port ?? 8443, opts.host ?? '0.0.0.0', () => {
        ws.server.off('error', reject);
        resolve();
      });
    });
    ws.watchTls();
    if (opts.metricsPort !== undefined) {
      ws.metricsServer = await startStatusServer({ port: opts.metricsPort, host: opts.metricsHost ?? '0.0.0.0', registry: ws.metrics.registry, ready: () => ws.ready() });
    }
    ws.logger.info({ port: ws.port, metricsPort: ws.metricsServer?.port, certFile: opts.certFile }, 'webhook listening');
    return ws;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** The metrics listener's port, when there is one. */
  get metricsPort(): number | undefined {
    return this.metricsServer?.port;
  }

  ready(): boolean {
    return !this.closing && this.opts.catalog.synced();
  }

  /**
   * Re-reads the cert and key; keeps the old context when the new pair is unusable (e.g.
   * caught between the writes of cert and key). Resolves true when a new pair took effect.
   */
  async reloadTls(): Promise<boolean> {
    try {
      const [cert, key] = await Promise.all([readFile(this.opts.certFile, 'utf8'), readFile(this.opts.keyFile, 'utf8')]);
      if (cert + key === this.tlsFingerprint) return false;
      tls.createSecureContext({ cert, key, ...TLS_POLICY }); // throws on a mismatched or partial pair
      this.server.setSecureContext({ cert, key, ...TLS_POLICY });
      this.tlsFingerprint = cert + key;
      this.logger.info({ certFile: this.opts.certFile }, 'TLS certificate reloaded');
      return true;
    } catch (err) {
      this.logger.warn({ err, certFile: this.opts.certFile }, 'TLS reload failed; keeping the current certificate');
      return false;
    }
  }

  /** Watches the directories: Secret volumes swap a symlink, which a file watch misses. */
  private watchTls(): void {
    const dirs = new Set([path.dirname(this.opts.certFile), path.dirname(this.opts.keyFile)]);
    for (const dir of dirs) {
      try {
        const w = watch(dir, () => this.scheduleReload());
        w.on('error', (err) => this.logger.warn({ err, dir }, 'TLS watch failed'));
        this.watchers.push(w);
      } catch (err) {
        this.logger.warn({ err, dir }, 'cannot watch TLS directory; certificate will not reload');
      }
    }
  }

  private scheduleReload(): void {
    clearTimeout(this.reloadTimer);
    // Cert and key are written one after the other: wait for both.
    this.reloadTimer = setTimeout(() => void this.reloadTls(), 100);
    this.reloadTimer.unref();
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = (req.url ?? '/').split('?')[0];
    if (url === '/healthz') return sendText(res, 200, 'ok');
    if (url === '/readyz') return this.ready() ? sendText(res, 200, 'ok') : sendText(res, 503, 'not ready');
    if (url !== MUTATE_PATH) return sendText(res, 404, 'not found');
    if (req.method !== 'POST') return sendText(res, 405, 'POST only');
    readBody(req, this.maxBody).then(
      (body) => this.admit(body, res),
      (err: unknown) => {
        const status = err instanceof HttpError ? err.status : 400;
        // Close the connection: the rest of an oversized body is never read.
        sendText(res, status, (err as Error).message, true);
      },
    );
  }

  private admit(body: Buffer, res: ServerResponse): void {
    let doc: unknown;
    try {
      doc = JSON.parse(body.toString('utf8'));
    } catch {
      return sendText(res, 400, 'body is not JSON');
    }
    const parsed = AdmissionReviewRequestSchema.safeParse(doc);
    if (!parsed.success) return sendText(res, 400, `not an admission.k8s.io/v1 AdmissionReview: ${formatZodError('', parsed.error).join('; ')}`);
    const request = parsed.data.request;
    const t0 = process.hrtime.bigint();
    const log = this.logger.child({ uid: request.uid, kind: request.kind.kind, namespace: request.namespace, name: request.name, operation: request.operation });
    try {
      const response = mutate(request, this.opts.catalog, this.opts.config);
      // Denials are what users ask about; accepted admissions would flood the log at info.
      if (response.allowed) log.debug({ allowed: true, patched: response.patch !== undefined }, 'admission');
      else {
        log.info({ allowed: false, code: response.status?.code, message: response.status?.message }, 'admission denied');
        this.metrics.webhookRejections.inc({ code: String(response.status?.code ?? 403) });
      }
      this.metrics.webhookAdmissionDuration.observe({ operation: request.operation, allowed: String(response.allowed) }, secondsSince(t0));
      sendJson(res, 200, reviewResponse(response));
    } catch (err) {
      log.error({ err }, 'admission failed');
      this.metrics.webhookRejections.inc({ code: '500' });
      sendJson(res, 200, reviewResponse({ uid: request.uid, allowed: false, status: { code: 500, message: `internal error: ${(err as Error).message}` } }));
    }
  }

  /** Stops accepting, lets in-flight requests finish (bounded), then cuts what is left. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    clearTimeout(this.reloadTimer);
    for (const w of this.watchers) w.close();
    this.watchers = [];
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    const cut = setTimeout(() => this.server.closeAllConnections(), this.opts.shutdownGraceMs ?? 5000);
    await closed;
    clearTimeout(cut);
    await this.metricsServer?.close();
    this.logger.info('webhook stopped');
  }
}
