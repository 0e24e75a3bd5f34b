import http from 'node:http';
import type { Socket } from 'node:net';

/**
 * An image origin on loopback for lazy-image tests: serves one raw image over HTTP with
 * HEAD and Range (what QEMU's curl driver needs), throttled, and counts the body bytes it
 * actually sent. `stop()` closes it for good (connections too), as an origin that went away.
 */
export interface Origin {
  url: string;
  port: number;
  /** Body bytes written to clients so far. */
  served(): number;
  requests(): number;
  /** Body bytes sent per range request, [start, end) each (not the HEAD requests). */
  sent(): Array<[number, number]>;
  stop(): Promise<void>;
}

/**
 * `bytesPerSecond` throttles each request on its own; `linkBytesPerSecond` is one token bucket
 * shared by every request (the origin's uplink, which N nodes at once divide).
 */
export async function startOrigin(
  image: Buffer,
  opts: { bytesPerSecond?: number; linkBytesPerSecond?: number; name?: string; port?: number; ranges?: boolean } = {},
): Promise<Origin> {
  const rate = opts.bytesPerSecond ?? Infinity;
  const link = opts.linkBytesPerSecond;
  let linkFree = Date.now();
  /** How long `n` bytes wait for their turn on the shared link. */
  const linkWait = (n: number): number => {
    if (link === undefined) return 0;
    const now = Date.now();
    const at = Math.max(now, linkFree);
    linkFree = at + (n / link) * 1000;
    return at - now;
  };
  const chunk = 64 * 1024;
  let served = 0;
  let requests = 0;
  const sent: Array<[number, number]> = [];
  const sockets = new Set<Socket>();
  const server = http.createServer((req, res) => {
    requests++;
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-length': image.length, ...(opts.ranges === false ? {} : { 'accept-ranges': 'bytes' }) });
      res.end();
      return;
    }
    const m = opts.ranges === false ? null : /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : 0;
    const end = m?.[2] ? Math.min(Number(m[2]), image.length - 1) : image.length - 1;
    if (start >= image.length) {
      res.writeHead(416, { 'content-range': `bytes */${image.length}` });
      res.end();
      return;
    }
    res.writeHead(m ? 206 : 200, {
      'content-length': end - start + 1,
      ...(opts.ranges === false ? {} : { 'accept-ranges': 'bytes' }),
      ...(m ? { 'content-range': `bytes ${start}-${end}/${image.length}` } : {}),
    });
    let pos = start;
    const pump = (): void => {
      if (res.destroyed) return;
      if (pos > end) {
        res.end();
        return;
      }
      const n = Math.min(chunk, end - pos + 1);
      const send = (): void => {
        if (res.destroyed) return;
        const piece = image.subarray(pos, pos + n);
        sent.push([pos, pos + n]);
        pos += n;
        served += n;
        const ok = res.write(piece);
        const delay = Number.isFinite(rate) ? (n / rate) * 1000 : 0;
        const next = (): void => void setTimeout(pump, delay);
        if (ok) next();
        else res.once('drain', next);
      };
      const wait = linkWait(n);
      if (wait > 0) setTimeout(send, wait);
      else send();
    };
    pump();
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, '127.0.0.1', resolve));
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  return {
    url: `http://127.0.0.1:${port}/${opts.name ?? 'image.raw'}`,
    port,
    served: () => served,
    requests: () => requests,
    sent: () => sent,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
