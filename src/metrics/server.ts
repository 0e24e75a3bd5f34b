import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';

/**
 * The small HTTP endpoint each long-running component serves: `/metrics` (Prometheus text
 * format), `/healthz` (the process is alive) and `/readyz` (it can do its job now).
 */
export interface StatusServerOptions {
  port: number;
  host?: string;
  registry?: Registry;
  /** Ready when it resolves true; a reason string when not. */
  ready?: () => boolean | string | Promise<boolean | string>;
}

export interface StatusServer {
  port: number;
  close(): Promise<void>;
}

export async function startStatusServer(opts: StatusServerOptions): Promise<StatusServer> {
  const registry = opts.registry ?? new Registry();
  const server = http.createServer((req, res) => {
    const url = req.url?.split('?')[0];
    const reply = (code: number, body: string, type = 'text/plain; charset=utf-8'): void => {
      res.writeHead(code, { 'content-type': type });
      res.end(body);
    };
    if (req.method !== 'GET') return reply(405, 'method not allowed\n');
    if (url === '/healthz') return reply(200, 'ok\n');
    if (url === '/readyz') {
      Promise.resolve(opts.ready ? opts.ready() : true).then(
        (r) => (r === true ? reply(200, 'ready\n') : reply(503, `not ready: ${r === false ? 'starting' : r}\n`)),
        (e: unknown) => reply(503, `not ready: ${String(e)}\n`),
      );
      return;
    }
    if (url === '/metrics') {
      registry.metrics().then(
        (text) => reply(200, text, registry.contentType),
        (e: unknown) => reply(500, `metrics failed: ${String(e)}\n`),
      );
      return;
    }
    reply(404, 'not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host ?? '0.0.0.0', () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
