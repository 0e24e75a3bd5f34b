import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { constants as fsc, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { once } from 'node:events';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { maxSourceBytes } from '../api/limits.js';
import { silentLogger, type Logger } from '../log.js';
import { QEMU_IMG_ADDRESS_SPACE, inspectImage, limitedArgv } from './image-inspect.js';
import { BackendError, type ImageSpec } from './types.js';

/**
 * Brings a golden image onto the node: download (http/https) or copy (hostPath), verify
 * sha256, inspect it (image-inspect.ts: format as declared, no backing or data file, size
 * within the declaration), convert qcow2 to raw under resource limits, then rename into place.
 * Every transfer stops at the declared size plus a small slack (limits.ts). Everything is written under
 * `<dest>.part*` names first, so a file at `destPath` is always a complete, verified image:
 * a crash or an error leaves at most `.part` files, which the next run removes.
 */

export interface FetchOptions {
  signal?: AbortSignal;
  /** Deadline for the whole import (download + conversion). Default 30 min. */
  timeoutMs?: number;
  /** A transfer that delivers no bytes for this long is a failure. Default 60 s. */
  idleTimeoutMs?: number;
  /** Redirects followed before giving up. Default 5. */
  maxRedirects?: number;
  /** File mode of the final image. Default 0o600: only the agent and its backend read goldens. */
  mode?: number;
  qemuImgBinary?: string;
  logger?: Logger;
}

export interface FetchedImage {
  path: string;
  /** Size of the raw image at `path` (the virtual size of the disk). */
  sizeBytes: number;
  /** sha256 of the source bytes as fetched (before any conversion). */
  sha256: string;
}

const DEFAULT_TIMEOUT_MS = 30 * 60_000;
const DEFAULT_IDLE_TIMEOUT_MS = 60_000;
const DEFAULT_MAX_REDIRECTS = 5;

/** The temporary names an import of `destPath` may leave behind. */
export function partPaths(destPath: string): { download: string; converted: string } {
  return { download: `${destPath}.src.part`, converted: `${destPath}.part` };
}

export async function removePartFiles(destPath: string): Promise<void> {
  const { download, converted } = partPaths(destPath);
  await Promise.all([fs.rm(download, { force: true }), fs.rm(converted, { force: true })]);
}

export async function fetchImage(spec: ImageSpec, destPath: string, opts: FetchOptions = {}): Promise<FetchedImage> {
  const log = (opts.logger ?? silentLogger).child({ image: spec.name });
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const deadline = AbortSignal.timeout(timeoutMs);
  const signal = opts.signal ? AbortSignal.any([opts.signal, deadline]) : deadline;
  const { download, converted } = partPaths(destPath);
  // A raw source is written straight to the final temp name; qcow2 needs a second file.
  const fetchedTo = spec.format === 'qcow2' ? download : converted;
  const started = Date.now();

  await removePartFiles(destPath);
  try {
    let sha256: string;
    let expected: string | undefined;
    const maxBytes = maxSourceBytes(spec.sizeBytes);
    if ('http' in spec.source) {
      expected = spec.source.http.sha256;
      log.info({ event: 'image.download.start', url: spec.source.http.url }, 'downloading image');
      sha256 = await httpDownload(spec.source.http.url, fetchedTo, {
        signal,
        idleTimeoutMs: opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
        maxRedirects: opts.maxRedirects ?? DEFAULT_MAX_REDIRECTS,
        maxBytes,
        log,
      });
    } else {
      expected = spec.source.hostPath.sha256;
      sha256 = await copyHashed(spec.source.hostPath.path, fetchedTo, signal, maxBytes);
    }
    if (expected !== undefined && expected !== sha256) {
      throw new BackendError(`image ${spec.name}: sha256 mismatch: expected ${expected}, got ${sha256}`, 'checksum');
    }
    const qemuImg = opts.qemuImgBinary ?? 'qemu-img';
    const facts = await inspectImage(fetchedTo, spec.format, spec.sizeBytes, { qemuImg, run, signal }).catch((err: unknown) => {
      if (err instanceof BackendError && err.kind === 'invalid') throw new BackendError(`image ${spec.name}: ${err.message}`, 'invalid', { cause: err });
      throw err;
    });
    if (spec.format === 'qcow2') {
      const cpuSeconds = Math.max(1, (timeoutMs - (Date.now() - started)) / 1000);
      await qemuImgConvert(qemuImg, fetchedTo, converted, signal, { cpuSeconds, fileSizeBytes: facts.virtualSize });
      await fs.rm(fetchedTo, { force: true });
    }
    const { size } = await fs.stat(converted);
    if (spec.sizeBytes !== undefined && size > spec.sizeBytes) {
      // Disks were validated against the declared size; a larger image would not fit them.
      throw new BackendError(
        `image ${spec.name}: actual size ${size} bytes is larger than the declared size ${spec.sizeBytes} bytes`,
        'invalid',
      );
    }
    await fs.chmod(converted, opts.mode ?? 0o600);
    await fsyncFile(converted);
    await fs.rename(converted, destPath);
    log.info({ event: 'image.fetch.done', sizeBytes: size, sha256, ms: Date.now() - started }, 'image ready');
    return { path: destPath, sizeBytes: size, sha256 };
  } catch (err) {
    await removePartFiles(destPath).catch(() => undefined);
    const abortedBy = signal.aborted ? (opts.signal?.aborted ? 'aborted' : `timed out after ${timeoutMs} ms`) : undefined;
    const wrapped = toBackendError(err, `image ${spec.name}`, abortedBy);
    log.warn({ event: 'image.fetch.failed', kind: wrapped.kind, err: wrapped.message }, 'image import failed');
    throw wrapped;
  }
}

/**
 * A fetch failure as the backend reports it: `what` names the step (the same signature as
 * every driver's mapping); `abortedBy` says why the fetch's own signal fired, when it did.
 */
function toBackendError(err: unknown, what: string, abortedBy?: string): BackendError {
  if (err instanceof BackendError) return err;
  if (abortedBy !== undefined) return new BackendError(`${what}: import ${abortedBy}`, 'download', { cause: err });
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const msg = err instanceof Error ? err.message : String(err);
  if (code === 'ENOENT') return new BackendError(`${what}: source not found: ${msg}`, 'notFound', { cause: err });
  if (code === 'ENOSPC') return new BackendError(`${what}: no space left: ${msg}`, 'noSpace', { cause: err });
  return new BackendError(`${what}: ${msg}`, 'internal', { cause: err });
}

/** Passes bytes through while hashing them; stops a source that sends more than `maxBytes`. */
class HashingTap extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;
  constructor(
    private readonly maxBytes: number,
    private readonly onData?: () => void,
  ) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.bytes += chunk.length;
    if (this.bytes > this.maxBytes) {
      cb(new SourceTooLarge(this.maxBytes));
      return;
    }
    this.hash.update(chunk);
    this.onData?.();
    cb(null, chunk);
  }
}

/** A source past its declared size (plus slack): an endless body or /dev/zero stops here. */
class SourceTooLarge extends BackendError {
  constructor(maxBytes: number) {
    super(`source is larger than its declared size allows: stopped after ${maxBytes} bytes`, 'invalid');
  }
}

/**
 * Streams into `dest`. On failure it waits until the file stream is closed: the stream opens
 * its file asynchronously, and a cleanup that runs before that open would miss the file.
 */
async function pipeToFile(src: Readable, tap: HashingTap, dest: string, signal: AbortSignal): Promise<void> {
  const out = createWriteStream(dest, { mode: 0o600 });
  try {
    await pipeline(src, tap, out, { signal });
  } catch (err) {
    if (!out.closed) await once(out, 'close').catch(() => undefined);
    throw err;
  }
}

/**
 * hostPath: the path itself must be a regular file, not a link (O_NOFOLLOW) nor a device
 * (/dev/zero would never end); it is read from the descriptor that was checked.
 */
async function copyHashed(src: string, dest: string, signal: AbortSignal, maxBytes: number): Promise<string> {
  const fh = await fs.open(src, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ELOOP') throw new BackendError(`hostPath ${src} is a symbolic link; name the file itself`, 'invalid', { cause: err });
    throw err;
  });
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new BackendError(`hostPath ${src} is not a regular file`, 'invalid');
    if (st.size > maxBytes) throw new BackendError(`hostPath ${src} is ${st.size} bytes, larger than its declared size allows (${maxBytes} bytes)`, 'invalid');
    const tap = new HashingTap(maxBytes);
    await pipeToFile(fh.createReadStream({ autoClose: false }), tap, dest, signal);
    return tap.hash.digest('hex');
  } finally {
    await fh.close();
  }
}

interface DownloadOpts {
  signal: AbortSignal;
  maxBytes: number;
  idleTimeoutMs: number;
  maxRedirects: number;
  log: Logger;
}

async function httpDownload(url: string, dest: string, o: DownloadOpts): Promise<string> {
  let current = new URL(url);
  for (let hop = 0; ; hop++) {
    const res = await request(current, o.signal);
    const status = res.statusCode ?? 0;
    if (status >= 300 && status < 400 && res.headers.location) {
      res.resume();
      if (hop >= o.maxRedirects) {
        throw new BackendError(`download ${url}: more than ${o.maxRedirects} redirects`, 'download');
      }
      const next = new URL(res.headers.location, current);
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new BackendError(`download ${url}: redirect to unsupported scheme ${next.protocol}`, 'download');
      }
      o.log.debug({ event: 'image.download.redirect', from: current.href, to: next.href, status }, 'redirect');
      current = next;
      continue;
    }
    if (status < 200 || status >= 300) {
      res.resume();
      throw new BackendError(`download ${current.href}: HTTP ${status} ${res.statusMessage ?? ''}`.trimEnd(), 'download');
    }
    return await receive(res, current.href, dest, o);
  }
}

function request(url: URL, signal: AbortSignal): Promise<http.IncomingMessage> {
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.get(url, { signal }, resolve);
    req.on('error', (err) =>
      reject(signal.aborted ? err : new BackendError(`download ${url.href}: ${err.message}`, 'download', { cause: err })),
    );
  });
}

async function receive(res: http.IncomingMessage, href: string, dest: string, o: DownloadOpts): Promise<string> {
  const expectedLength = res.headers['content-length'] !== undefined ? Number(res.headers['content-length']) : undefined;
  if (expectedLength !== undefined && expectedLength > o.maxBytes) {
    res.destroy();
    throw new BackendError(`download ${href}: Content-Length ${expectedLength} is larger than the declared size allows (${o.maxBytes} bytes)`, 'invalid');
  }
  // The idle timer covers a stalled transfer: a server that sends headers and then nothing.
  let idle: NodeJS.Timeout | undefined;
  let stalled = false;
  const arm = (): void => {
    clearTimeout(idle);
    idle = setTimeout(() => {
      stalled = true;
      res.destroy(new Error(`no data for ${o.idleTimeoutMs} ms`));
    }, o.idleTimeoutMs);
  };
  const tap = new HashingTap(o.maxBytes, arm);
  arm();
  try {
    await pipeToFile(res, tap, dest, o.signal);
  } catch (err) {
    if (o.signal.aborted) throw err;
    if (err instanceof SourceTooLarge) throw new BackendError(`download ${href}: ${err.message}`, 'invalid', { cause: err });
    const msg = stalled ? `transfer stalled (no data for ${o.idleTimeoutMs} ms)` : `transfer failed: ${(err as Error).message}`;
    throw new BackendError(`download ${href}: ${msg} after ${tap.bytes} bytes`, 'download', { cause: err });
  } finally {
    clearTimeout(idle);
  }
  // A server that closes early without chunked framing ends the stream "cleanly".
  if (!res.complete || (expectedLength !== undefined && tap.bytes !== expectedLength)) {
    throw new BackendError(
      `download ${href}: transfer cut off after ${tap.bytes} of ${expectedLength ?? 'unknown'} bytes`,
      'download',
    );
  }
  return tap.hash.digest('hex');
}

/**
 * The image was inspected (no backing or data file); the conversion still runs with an
 * explicit input format, bounded address space, CPU time and output size, and the deadline.
 */
async function qemuImgConvert(
  binary: string,
  src: string,
  dest: string,
  signal: AbortSignal,
  l: { cpuSeconds: number; fileSizeBytes: number },
): Promise<void> {
  const cmd = limitedArgv(binary, ['convert', '-f', 'qcow2', '-O', 'raw', src, dest], { addressSpaceBytes: QEMU_IMG_ADDRESS_SPACE, ...l });
  const { code, stderr } = await run(cmd.binary, cmd.argv, signal).catch((err: unknown) => {
    if (signal.aborted) throw err;
    throw new BackendError(`cannot run ${binary}: ${(err as Error).message}`, 'internal', { cause: err });
  });
  if (code !== 0) {
    throw new BackendError(`qemu-img convert -f qcow2 -O raw failed (exit ${code}): ${stderr.trim()}`, 'invalid');
  }
}

/** Runs a binary with an argv array (never a shell); collects stderr for error messages. */
export function run(binary: string, argv: string[], signal?: AbortSignal): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, argv, { stdio: ['ignore', 'pipe', 'pipe'], signal });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    let failure: Error | undefined;
    child.on('error', (err) => {
      // Not started at all: no 'close' follows. Started then aborted: wait for it to exit,
      // so the caller's cleanup runs after the child stopped writing files.
      if (child.pid === undefined) reject(err);
      else failure = err;
    });
    child.on('close', (code, sig) => {
      if (failure) reject(failure);
      else resolve({ code: code ?? (sig ? 128 : 1), stdout, stderr });
    });
  });
}

async function fsyncFile(path: string): Promise<void> {
  const fh = await fs.open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
