import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { fetchImage } from '../../../src/backend/image-source.js';
import { BackendError, type ImageSpec } from '../../../src/backend/types.js';

const hasQemuImg = (() => {
  try {
    execFileSync('qemu-img', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
// Not all zeros, so that a wrong byte anywhere changes the hash.
const PAYLOAD = Buffer.from(Array.from({ length: 256 * 1024 }, (_, i) => (i * 7 + 3) & 0xff));

let server: http.Server;
let base: string;
const openSockets = new Set<import('node:net').Socket>();

beforeAll(async () => {
  server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (url === '/ok.raw') {
      res.writeHead(200, { 'content-length': PAYLOAD.length });
      res.end(PAYLOAD);
    } else if (url === '/redirect') {
      res.writeHead(302, { location: '/ok.raw' });
      res.end();
    } else if (url === '/loop') {
      res.writeHead(301, { location: '/loop' });
      res.end();
    } else if (url === '/cut') {
      // Promises the whole payload, sends half, then drops the connection.
      res.writeHead(200, { 'content-length': PAYLOAD.length });
      res.write(PAYLOAD.subarray(0, PAYLOAD.length / 2), () => res.socket?.destroy());
    } else if (url === '/stall') {
      res.writeHead(200, { 'content-length': PAYLOAD.length });
      res.write(PAYLOAD.subarray(0, 1024));
      // ...and then nothing: the connection stays open until the test server closes.
    } else if (url === '/trickle') {
      // Keeps sending a little at a time: never idle, but never done in time.
      res.writeHead(200, { 'content-length': PAYLOAD.length });
      let sent = 0;
      const t = setInterval(() => {
        if (res.destroyed || sent >= PAYLOAD.length) return clearInterval(t);
        res.write(PAYLOAD.subarray(sent, sent + 16));
        sent += 16;
      }, 20);
      res.on('close', () => clearInterval(t));
    } else if (url === '/image.qcow2') {
      fs.readFile(qcow2Path).then((b) => {
        res.writeHead(200, { 'content-length': b.length });
        res.end(b);
      });
    } else {
      res.writeHead(404);
      res.end('not found');
    }
  });
  server.on('connection', (s) => {
    openSockets.add(s);
    s.on('close', () => openSockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  for (const s of openSockets) s.destroy();
  await new Promise((r) => server.close(r));
});

let dir: string;
let qcow2Path: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'img-'));
  qcow2Path = path.join(dir, 'src.qcow2');
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const httpSpec = (p: string, sha256 = sha(PAYLOAD), format: 'raw' | 'qcow2' = 'raw'): ImageSpec => ({
  name: 'test-image',
  source: { http: { url: `${base}${p}`, sha256 } },
  format,
});

async function expectFailure(p: Promise<unknown>, kind: BackendError['kind'], message: RegExp): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BackendError);
  expect((err as BackendError).kind).toBe(kind);
  expect((err as BackendError).message).toMatch(message);
}

async function leftovers(): Promise<string[]> {
  return (await fs.readdir(dir)).filter((f) => f.startsWith('out'));
}

describe('fetchImage over http', () => {
  it('downloads, verifies and places the image with the requested mode', async () => {
    const dest = path.join(dir, 'out.raw');
    const got = await fetchImage(httpSpec('/ok.raw'), dest, { mode: 0o444 });
    expect(got).toEqual({ path: dest, sizeBytes: PAYLOAD.length, sha256: sha(PAYLOAD) });
    expect((await fs.readFile(dest)).equals(PAYLOAD)).toBe(true);
    expect((await fs.stat(dest)).mode & 0o777).toBe(0o444);
    expect(await leftovers()).toEqual(['out.raw']);
  });

  it('follows a redirect', async () => {
    const dest = path.join(dir, 'out.raw');
    const got = await fetchImage(httpSpec('/redirect'), dest);
    expect(got.sha256).toBe(sha(PAYLOAD));
  });

  it('gives up on a redirect loop after the configured number of hops', async () => {
    const dest = path.join(dir, 'out.raw');
    await expectFailure(fetchImage(httpSpec('/loop'), dest, { maxRedirects: 3 }), 'download', /more than 3 redirects/);
    expect(await leftovers()).toEqual([]);
  });

  it('reports the HTTP status of a failed download and leaves nothing behind', async () => {
    const dest = path.join(dir, 'out.raw');
    await expectFailure(fetchImage(httpSpec('/missing'), dest), 'download', /HTTP 404/);
    expect(await leftovers()).toEqual([]);
  });

  it('rejects a checksum mismatch naming expected and actual', async () => {
    const dest = path.join(dir, 'out.raw');
    const wrong = 'a'.repeat(64);
    await expectFailure(
      fetchImage(httpSpec('/ok.raw', wrong), dest),
      'checksum',
      new RegExp(`expected ${wrong}, got ${sha(PAYLOAD)}`),
    );
    expect(await leftovers()).toEqual([]);
  });

  it('does not replace a good image with a failed one', async () => {
    const dest = path.join(dir, 'out.raw');
    await fetchImage(httpSpec('/ok.raw'), dest);
    await expectFailure(fetchImage(httpSpec('/ok.raw', 'b'.repeat(64)), dest), 'checksum', /mismatch/);
    expect((await fs.readFile(dest)).equals(PAYLOAD)).toBe(true);
  });

  it('detects a cut-off transfer', async () => {
    const dest = path.join(dir, 'out.raw');
    await expectFailure(fetchImage(httpSpec('/cut'), dest), 'download', /cut off|transfer failed|aborted/);
    expect(await leftovers()).toEqual([]);
  });

  it('fails a stalled transfer after the idle timeout', async () => {
    const dest = path.join(dir, 'out.raw');
    await expectFailure(fetchImage(httpSpec('/stall'), dest, { idleTimeoutMs: 300 }), 'download', /stalled/);
    expect(await leftovers()).toEqual([]);
  });

  it('fails a transfer that never stalls but exceeds the overall timeout', async () => {
    const dest = path.join(dir, 'out.raw');
    await expectFailure(
      fetchImage(httpSpec('/trickle'), dest, { timeoutMs: 400, idleTimeoutMs: 5_000 }),
      'download',
      /timed out after 400 ms/,
    );
    expect(await leftovers()).toEqual([]);
  });

  it('stops when the caller aborts', async () => {
    const dest = path.join(dir, 'out.raw');
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await expectFailure(fetchImage(httpSpec('/stall'), dest, { signal: ac.signal }), 'download', /aborted/);
    expect(await leftovers()).toEqual([]);
  });

  it('removes .part files left by an earlier interrupted run', async () => {
    const dest = path.join(dir, 'out.raw');
    await fs.writeFile(`${dest}.part`, 'half');
    await fs.writeFile(`${dest}.src.part`, 'half');
    await fetchImage(httpSpec('/ok.raw'), dest);
    expect(await leftovers()).toEqual(['out.raw']);
  });

  it('rejects an image larger than its declared size', async () => {
    const dest = path.join(dir, 'out.raw');
    const spec = { ...httpSpec('/ok.raw'), sizeBytes: 1024 };
    await expectFailure(fetchImage(spec, dest), 'invalid', /larger than the declared size 1024/);
    expect(await leftovers()).toEqual([]);
  });
});

describe('fetchImage with qcow2 and hostPath sources', () => {
  it.skipIf(!hasQemuImg)('converts a downloaded qcow2 image to raw', async () => {
    // qemu-img is needed both to make the source and to convert it.
    const rawSrc = path.join(dir, 'src.raw');
    await fs.writeFile(rawSrc, PAYLOAD);
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', rawSrc, qcow2Path]);
    const qcow2Bytes = await fs.readFile(qcow2Path);
    const dest = path.join(dir, 'out.raw');
    const got = await fetchImage(httpSpec('/image.qcow2', sha(qcow2Bytes), 'qcow2'), dest);
    expect(got.sha256).toBe(sha(qcow2Bytes));
    expect(got.sizeBytes).toBe(PAYLOAD.length);
    expect((await fs.readFile(dest)).equals(PAYLOAD)).toBe(true);
    expect(await leftovers()).toEqual(['out.raw']);
  });

  it.skipIf(!hasQemuImg)('fails a "qcow2" source that is not qcow2, leaving nothing', async () => {
    const rawSrc = path.join(dir, 'src.raw');
    await fs.writeFile(rawSrc, PAYLOAD);
    const dest = path.join(dir, 'out.raw');
    const spec: ImageSpec = { name: 'x', source: { hostPath: { path: rawSrc } }, format: 'qcow2' };
    await expectFailure(fetchImage(spec, dest), 'invalid', /qemu-img convert/);
    expect(await leftovers()).toEqual([]);
  });

  it('copies a hostPath source and checks its sha256 when given', async () => {
    const src = path.join(dir, 'src.raw');
    await fs.writeFile(src, PAYLOAD);
    const dest = path.join(dir, 'out.raw');
    const spec: ImageSpec = { name: 'x', source: { hostPath: { path: src, sha256: sha(PAYLOAD) } }, format: 'raw' };
    expect((await fetchImage(spec, dest)).sizeBytes).toBe(PAYLOAD.length);
    expect((await fs.readFile(dest)).equals(PAYLOAD)).toBe(true);
    const bad: ImageSpec = { name: 'x', source: { hostPath: { path: src, sha256: '0'.repeat(64) } }, format: 'raw' };
    await expectFailure(fetchImage(bad, path.join(dir, 'out2.raw')), 'checksum', /expected 0{64}/);
  });

  it('reports a missing hostPath source as notFound', async () => {
    const spec: ImageSpec = { name: 'x', source: { hostPath: { path: path.join(dir, 'nope') } }, format: 'raw' };
    await expectFailure(fetchImage(spec, path.join(dir, 'out.raw')), 'notFound', /source not found/);
    expect(await leftovers()).toEqual([]);
  });
});
