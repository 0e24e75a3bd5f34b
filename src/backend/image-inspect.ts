import fs from 'node:fs/promises';
import { z } from 'zod';
import { LIMITS } from '../api/limits.js';
import { formatBytes } from '../api/quantity.js';
import { BackendError } from './types.js';

/**
 * What an image must be before anything converts or serves it, for both backends: the format
 * it was declared as, no backing file and no external data file (either would make
 * `qemu-img convert`, running as root, copy host files into the golden; the sha256 covers
 * only the publisher's bytes), and a virtual size within the declared size and the limits.
 * The qcow2 header is read here first, so no tool ever opens a file the image names; then
 * `qemu-img info` (under resource limits) confirms the format and gives the virtual size.
 */

export type ImageFormat = 'raw' | 'qcow2';

export interface ImageFacts {
  format: ImageFormat;
  virtualSize: number;
}

const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
/** qcow2 v3 incompatible feature bit 2: the guest data lives in an external data file. */
const QCOW2_EXTERNAL_DATA_FILE = 1n << 2n;
/** qcow2 header extension carrying the external data file's name. */
const QCOW2_EXT_DATA_FILE = 0x44415441;

/** Resource limits for qemu-img on tenant-supplied images (prlimit: address space, CPU seconds, file size). */
export interface ToolLimits {
  addressSpaceBytes: number;
  cpuSeconds: number;
  /** Largest file the tool may write (the converted image). */
  fileSizeBytes: number;
}

export const QEMU_IMG_ADDRESS_SPACE = 2 * 2 ** 30;

/** argv that runs `binary` under `prlimit` (util-linux): no setrlimit in Node itself. */
export function limitedArgv(binary: string, argv: readonly string[], l: ToolLimits): { binary: string; argv: string[] } {
  return {
    binary: 'prlimit',
    argv: [`--as=${l.addressSpaceBytes}`, `--cpu=${Math.max(1, Math.ceil(l.cpuSeconds))}`, `--fsize=${Math.max(0, Math.ceil(l.fileSizeBytes))}`, '--', binary, ...argv],
  };
}

/**
 * Pure: the problem with the start of an image declared as `format`, or undefined. `head` is
 * the first bytes of the file (64 KiB covers any header and its extensions we look at).
 */
export function headerProblem(head: Buffer, format: ImageFormat): string | undefined {
  const isQcow2 = head.length >= 4 && head.readUInt32BE(0) === QCOW2_MAGIC;
  if (format === 'raw') return isQcow2 ? 'is a qcow2 image but declared format raw' : undefined;
  if (!isQcow2) return 'is not a qcow2 image (no QFI magic) but declared format qcow2';
  if (head.length < 72) return 'has a truncated qcow2 header';
  const version = head.readUInt32BE(4);
  if (version !== 2 && version !== 3) return `has qcow2 version ${version} (only 2 and 3 are read)`;
  const backingOffset = head.readBigUInt64BE(8);
  const backingSize = head.readUInt32BE(16);
  if (backingOffset !== 0n || backingSize !== 0) return 'names a backing file (an image must be self-contained)';
  if (version === 3) {
    if (head.length < 104) return 'has a truncated qcow2 v3 header';
    const incompatible = head.readBigUInt64BE(72);
    if (incompatible & QCOW2_EXTERNAL_DATA_FILE) return 'uses an external data file (an image must be self-contained)';
    // Header extensions follow the header; the data file name alone (without the bit) is refused too.
    let off = head.readUInt32BE(100);
    while (off + 8 <= head.length) {
      const type = head.readUInt32BE(off);
      const len = head.readUInt32BE(off + 4);
      if (type === 0) break;
      if (type === QCOW2_EXT_DATA_FILE) return 'names an external data file (an image must be self-contained)';
      off += 8 + Math.ceil(len / 8) * 8;
    }
  }
  return undefined;
}

const QemuImgInfoSchema = z
  .object({
    format: z.string(),
    'virtual-size': z.number().int().nonnegative(),
    'backing-filename': z.string().optional(),
    'full-backing-filename': z.string().optional(),
    'format-specific': z.object({ type: z.string(), data: z.object({ 'data-file': z.string().optional() }).passthrough() }).passthrough().optional(),
  })
  .passthrough();

/** Pure: checks `qemu-img info --output=json` against the declaration; returns the facts. */
export function checkQemuImgInfo(json: string, format: ImageFormat, declaredBytes: number | undefined): ImageFacts {
  let info: z.output<typeof QemuImgInfoSchema>;
  try {
    info = QemuImgInfoSchema.parse(JSON.parse(json));
  } catch (e) {
    throw new BackendError(`qemu-img info gave an unreadable answer: ${(e as Error).message.split('\n')[0]}`, 'internal');
  }
  const problem =
    info.format !== format
      ? `is format ${info.format}, declared ${format}`
      : info['backing-filename'] !== undefined || info['full-backing-filename'] !== undefined
        ? 'names a backing file (an image must be self-contained)'
        : info['format-specific']?.data['data-file'] !== undefined
          ? 'uses an external data file (an image must be self-contained)'
          : undefined;
  if (problem) throw new BackendError(problem, 'invalid');
  return { format, virtualSize: checkVirtualSize(info['virtual-size'], declaredBytes) };
}

function checkVirtualSize(size: number, declaredBytes: number | undefined): number {
  if (declaredBytes !== undefined && size > declaredBytes) {
    throw new BackendError(`has a virtual size of ${size} bytes, larger than the declared size ${declaredBytes} bytes`, 'invalid');
  }
  if (size > LIMITS.maxDiskBytes) throw new BackendError(`has a virtual size of ${size} bytes, over the limit of ${formatBytes(LIMITS.maxDiskBytes)}`, 'invalid');
  return size;
}

export type Runner = (binary: string, argv: string[], signal?: AbortSignal) => Promise<{ code: number; stdout: string; stderr: string }>;

/**
 * Inspects a fetched image file before anything else reads it as an image. Throws
 * BackendError('invalid') whose message says what is wrong (the caller prefixes the image).
 */
export async function inspectImage(
  file: string,
  format: ImageFormat,
  declaredBytes: number | undefined,
  o: { qemuImg: string; run: Runner; signal?: AbortSignal },
): Promise<ImageFacts> {
  const fh = await fs.open(file, 'r');
  let head: Buffer;
  let fileSize: number;
  try {
    fileSize = (await fh.stat()).size;
    head = Buffer.alloc(64 * 1024);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    head = head.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
  const problem = headerProblem(head, format);
  if (problem) throw new BackendError(problem, 'invalid');
  // A raw image is its bytes: nothing to ask a tool.
  if (format === 'raw') return { format, virtualSize: checkVirtualSize(fileSize, declaredBytes) };
  const cmd = limitedArgv(o.qemuImg, ['info', '--output=json', '-f', format, file], {
    addressSpaceBytes: QEMU_IMG_ADDRESS_SPACE,
    cpuSeconds: 30,
    fileSizeBytes: 0,
  });
  const res = await o.run(cmd.binary, cmd.argv, o.signal);
  if (res.code !== 0) throw new BackendError(`qemu-img info failed (exit ${res.code}): ${res.stderr.trim()}`, 'invalid');
  return checkQemuImgInfo(res.stdout, format, declaredBytes);
}
