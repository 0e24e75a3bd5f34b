/**
 * Reads the fixed qcow2 header (big-endian; see QEMU's docs/interop/qcow2.txt): enough to
 * know a disk's virtual size and backing file without spawning `qemu-img info` per disk, and
 * without taking QEMU's image lock that a running export holds.
 */

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
/** Bytes to read to cover the header and a backing file name of any sane length. */
export const QCOW2_PROBE_BYTES = 64 * 1024;

export interface Qcow2Header {
  version: number;
  virtualSize: number;
  backingFile?: string;
}

/** Parses the start of a file; undefined when it is not a qcow2 image (or is truncated). */
export function parseQcow2Header(buf: Buffer): Qcow2Header | undefined {
  if (buf.length < 32 || buf.readUInt32BE(0) !== QCOW2_MAGIC) return undefined;
  const version = buf.readUInt32BE(4);
  const backingOffset = Number(buf.readBigUInt64BE(8));
  const backingSize = buf.readUInt32BE(16);
  const virtualSize = Number(buf.readBigUInt64BE(24));
  if (backingOffset === 0 || backingSize === 0) return { version, virtualSize };
  if (backingOffset + backingSize > buf.length) return undefined;
  return { version, virtualSize, backingFile: buf.subarray(backingOffset, backingOffset + backingSize).toString('utf8') };
}
