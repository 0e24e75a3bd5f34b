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
    } else if (url === '/endless') {
      // No Content-Length, never ends: an endless body must not fill the node's disk.
      res.writeHead(200);
      const chunk = Buffer.alloc(64 * 1024, 0x5a);
      const pump = (): void => {
        while (!res.destroyed && res.write(chunk));
        if (!res.destroyed) res.once('drain', pump);
      };
      pump();
    } else if (url === '/huge-length') {
      res.writeHead(200, { 'content-length': String(2 ** 50) });
      res.write(PAYLOAD);
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
    await expectFailure(fetchImage(spec, dest), 'invalid', /image x: is not a qcow2 image \(no QFI magic\) but declared format qcow2/);
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

describe('F7: every transfer is bounded by the declared size', () => {
  it('an endless HTTP body stops at the declared size plus slack, with a clear error and nothing left', async () => {
    const dest = path.join(dir, 'out.raw');
    const spec = { ...httpSpec('/endless'), sizeBytes: 1024 * 1024 };
    await expectFailure(fetchImage(spec, dest), 'invalid', /larger than its declared size allows: stopped after \d+ bytes/);
    expect(await leftovers()).toEqual([]);
  });

  it('a Content-Length beyond the declared size is refused before reading', async () => {
    const dest = path.join(dir, 'out.raw');
    const spec = { ...httpSpec('/huge-length'), sizeBytes: 1024 * 1024 };
    await expectFailure(fetchImage(spec, dest), 'invalid', /Content-Length 1125899906842624 is larger than the declared size allows/);
    expect(await leftovers()).toEqual([]);
  });

  it('hostPath: /dev/zero, a symbolic link and a file beyond the declared size are refused', async () => {
    const dest = path.join(dir, 'out.raw');
    const zero: ImageSpec = { name: 'x', source: { hostPath: { path: '/dev/zero' } }, format: 'raw', sizeBytes: 1024 * 1024 };
    await expectFailure(fetchImage(zero, dest), 'invalid', /hostPath \/dev\/zero is not a regular file/);
    const src = path.join(dir, 'src.raw');
    await fs.writeFile(src, PAYLOAD);
    await fs.symlink(src, path.join(dir, 'link.raw'));
    const link: ImageSpec = { name: 'x', source: { hostPath: { path: path.join(dir, 'link.raw') } }, format: 'raw' };
    await expectFailure(fetchImage(link, dest), 'invalid', /is a symbolic link/);
    const big = path.join(dir, 'big.raw');
    await fs.writeFile(big, '');
    await fs.truncate(big, 64 * 1024 * 1024); // sparse: costs nothing
    const tooBig: ImageSpec = { name: 'x', source: { hostPath: { path: big } }, format: 'raw', sizeBytes: 1024 * 1024 };
    await expectFailure(fetchImage(tooBig, dest), 'invalid', /larger than its declared size allows/);
    expect(await leftovers()).toEqual([]);
  });
});

describe.skipIf(!hasQemuImg)('F2: images are inspected before conversion (crafted with qemu-img)', () => {
  const MiB = 1024 * 1024;
  const secretText = 'HOST-SECRET-0123456789\n';

  async function secretFile(): Promise<string> {
    const f = path.join(dir, 'host-secret');
    await fs.writeFile(f, secretText.repeat(1000));
    return f;
  }
  const fromHost = (p: string, format: 'raw' | 'qcow2', sizeBytes?: number): ImageSpec => ({
    name: 'evil',
    source: { hostPath: { path: p } },
    format,
    ...(sizeBytes !== undefined ? { sizeBytes } : {}),
  });
  async function noSecretAnywhere(): Promise<void> {
    expect(await leftovers()).toEqual([]);
  }

  it('a qcow2 naming a backing file (a host file) is refused; no host byte reaches the golden', async () => {
    const secret = await secretFile();
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', secret, '-F', 'raw', qcow2Path, String(MiB)]);
    await expectFailure(fetchImage(fromHost(qcow2Path, 'qcow2', MiB), path.join(dir, 'out.raw')), 'invalid', /image evil: names a backing file/);
    await noSecretAnywhere();
  });

  it('a qcow2 with an external data file is refused', async () => {
    const data = path.join(dir, 'data.bin');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${data},data_file_raw=on`, qcow2Path, String(MiB)]);
    await fs.writeFile(data, secretText.repeat(1000)); // the "host file" it names
    await expectFailure(fetchImage(fromHost(qcow2Path, 'qcow2', MiB), path.join(dir, 'out.raw')), 'invalid', /image evil: uses an external data file/);
    await noSecretAnywhere();
  });

  it('a qcow2 declared raw, and a virtual size beyond the declared size, are refused', async () => {
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', qcow2Path, String(1024 * MiB)]);
    await expectFailure(fetchImage(fromHost(qcow2Path, 'raw'), path.join(dir, 'out.raw')), 'invalid', /is a qcow2 image but declared format raw/);
    await expectFailure(
      fetchImage(fromHost(qcow2Path, 'qcow2', MiB), path.join(dir, 'out.raw')),
      'invalid',
      /has a virtual size of 1073741824 bytes, larger than the declared size 1048576 bytes/,
    );
    await noSecretAnywhere();
  });

  it('a clean qcow2 still converts', async () => {
    const rawSrc = path.join(dir, 'src.raw');
    await fs.writeFile(rawSrc, PAYLOAD);
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', rawSrc, qcow2Path]);
    const got = await fetchImage(fromHost(qcow2Path, 'qcow2', PAYLOAD.length), path.join(dir, 'out.raw'));
    expect(got.sizeBytes).toBe(PAYLOAD.length);
    expect((await fs.stat(got.path)).mode & 0o777).toBe(0o600);
  });
});
