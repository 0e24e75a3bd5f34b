import http from 'node:http';
import https from 'node:https';
import { z } from 'zod';
import { LIMITS } from '../../api/limits.js';
import { RemoteDiskRefSchema, type RemoteDiskRef } from '../remote.js';
import { flatAddr } from './nbd.js';
import { headerProblem } from '../image-inspect.js';
import { BackendError, type ImageSpec } from '../types.js';
import type { QsdSession } from './session.js';

/**
 * Where a lazy golden reads from, as QEMU block nodes: the origin over HTTP(S) (curl driver)
 * or a peer's export over NBD. Pure rules (size, URIs) and the small probes done before a
 * golden is made.
 */

export const LazySourceSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('http'), url: z.string().regex(/^https?:\/\//) }).strict(),
  z.object({ kind: z.literal('peer'), ref: RemoteDiskRefSchema }).strict(),
]);
export type LazySource = z.output<typeof LazySourceSchema>;

/** The URI QEMU would write for an NBD export (a golden's backing file name). */
export function nbdUri(ref: Extract<RemoteDiskRef, { transport: 'nbd' }>): string {
  const exp = encodeURIComponent(ref.exportName);
  if (ref.address.kind === 'unix') return `nbd+unix:///${exp}?socket=${ref.address.path}`;
  const host = ref.address.host.includes(':') ? `[${ref.address.host}]` : ref.address.host;
  return `nbd://${host}:${ref.address.port}/${exp}`;
}
/**
 * Options of a read-only NBD node over a peer's export; waits out a short peer restart. `tls`:
 * the client credentials (NbdTls.clientArgs), empty for plain NBD.
 */
export function nbdNodeOptions(ref: RemoteDiskRef, nodeName: string, tls: Record<string, unknown> = {}): Record<string, unknown> {
  if (ref.transport !== 'nbd') throw new BackendError(`qsd reads NBD exports only, not ${ref.transport}`, 'invalid');
  return { driver: 'nbd', 'node-name': nodeName, server: flatAddr(ref.address), export: ref.exportName, 'read-only': true, 'reconnect-delay': 10, ...tls };
}

export function sourceOf(spec: ImageSpec): LazySource {
  if (spec.peer) return { kind: 'peer', ref: nbdRef(spec.peer) };
  if ('http' in spec.source) return { kind: 'http', url: spec.source.http.url };
  throw new BackendError(`image ${spec.name}: a lazy image needs an http(s) origin or a peer`, 'invalid');
}

export function nbdRef(ref: RemoteDiskRef): Extract<RemoteDiskRef, { transport: 'nbd' }> {
  if (ref.transport !== 'nbd') throw new BackendError(`qsd reads peers over NBD only, not ${ref.transport}`, 'invalid');
  return ref;
}

/** The same size rule as a full import: never larger than declared (disks were sized by it). */
export function sizeProblem(size: number, declared: number | undefined, source: LazySource): string | undefined {
  if (source.kind === 'peer' && source.ref.sizeBytes > 0 && source.ref.sizeBytes !== size) {
    return `peer export is ${size} bytes, its reference says ${source.ref.sizeBytes}`;
  }
  if (declared !== undefined && size > declared) return `actual size ${size} bytes is larger than the declared size ${declared} bytes`;
  if (declared === undefined && size > LIMITS.maxUndeclaredImageBytes) {
    return `actual size ${size} bytes is larger than the limit of ${LIMITS.maxUndeclaredImageBytes} bytes for an image with no declared size`;
  }
  if (size === 0) return 'source is empty';
  return undefined;
}

export async function nodeSize(session: QsdSession, nodeName: string): Promise<number> {
  const info = await session.exec<Array<{ 'node-name'?: string; image?: { 'virtual-size'?: number } }>>(
    'query-named-block-nodes',
    { flat: true },
    'query-named-block-nodes',
  );
  return info.find((n) => n['node-name'] === nodeName)?.image?.['virtual-size'] ?? 0;
}

/** The first `bytes` of a URL (a Range request; a server that ignores Range is cut off). */
export function rangeGet(url: string, bytes: number, signal?: AbortSignal): Promise<{ head: Buffer; ranges: boolean }> {
  return new Promise((resolve, reject) => {
    const get = url.startsWith('https:') ? https.get : http.get;
    const req = get(url, { headers: { range: `bytes=0-${bytes - 1}` }, timeout: 10_000, ...(signal ? { signal } : {}) }, (res) => {
      if (res.statusCode !== 200 && res.statusCode !== 206) {
        res.resume();
        reject(new Error(`HTTP ${res.statusCode}`));
        return;
      }
      const ranges = res.statusCode === 206;
      const chunks: Buffer[] = [];
      let got = 0;
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        got += c.length;
        if (got >= bytes) req.destroy();
      });
      const done = (): void => resolve({ head: Buffer.concat(chunks).subarray(0, bytes), ranges });
      res.on('end', done);
      res.on('close', done);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (e) => {
      if ((e as NodeJS.ErrnoException).code === 'ECONNRESET' && req.destroyed) return;
      reject(e);
    });
  });
}

/** image-inspect's rule for a raw source, on its first 64 KiB: it must not be a qcow2 image. */
/** Also tells whether the origin serves byte ranges (QEMU's curl driver needs them). */
export async function checkRawOrigin(name: string, url: string, signal?: AbortSignal): Promise<{ ranges: boolean }> {
  const { head, ranges } = await rangeGet(url, 64 * 1024, signal).catch((e: unknown) => {
    throw new BackendError(`image ${name}: origin ${url} unreachable: ${(e as Error).message}`, 'download', { cause: e });
  });
  const problem = headerProblem(head, 'raw');
  if (problem) throw new BackendError(`image ${name}: source ${problem}`, 'invalid');
  return { ranges };
}
