import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { z } from 'zod';
import { run } from '../image-source.js';
import { BackendError } from '../types.js';

/**
 * sha256 of what a standalone qcow2 file holds as a disk (its virtual content), computed
 * from `qemu-img map` (which extents hold data, and where in the file) and the file itself,
 * so that a sparse 64 GiB golden costs no temporary copy. The file must be flushed (the
 * daemon reopened it read-only) and have no backing: then every extent that is not data
 * reads as zeros.
 */

const MapSchema = z.array(
  z.object({ start: z.number(), length: z.number(), data: z.boolean(), zero: z.boolean(), offset: z.number().optional() }).passthrough(),
);

const CHUNK = 4 * 1024 * 1024;
const ZEROS = Buffer.alloc(CHUNK);

export async function contentSha256(file: string, virtualSize: number, qemuImg: string, signal?: AbortSignal): Promise<string> {
  // -U: the daemon holds the image lock; the file is read-only in it now.
  const res = await run(qemuImg, ['map', '-U', '--output=json', '-f', 'qcow2', file], signal);
  if (res.code !== 0) throw new BackendError(`hash ${file}: qemu-img map failed: ${res.stderr.trim()}`, 'internal');
  const extents = MapSchema.parse(JSON.parse(res.stdout));
  const hash = createHash('sha256');
  const fh = await fs.open(file, 'r');
  const buf = Buffer.alloc(CHUNK);
  let pos = 0;
  try {
    for (const e of extents) {
      if (e.start !== pos) throw new BackendError(`hash ${file}: qemu-img map has a gap at ${pos}`, 'internal');
      for (let done = 0; done < e.length; ) {
        signal?.throwIfAborted();
        const n = Math.min(CHUNK, e.length - done);
        if (e.data && !e.zero && e.offset !== undefined) {
          const { bytesRead } = await fh.read(buf, 0, n, e.offset + done);
          if (bytesRead !== n) throw new BackendError(`hash ${file}: short read at ${e.offset + done}`, 'internal');
          hash.update(buf.subarray(0, n));
        } else {
          hash.update(ZEROS.subarray(0, n));
          // A long zero extent reads nothing: yield now and then so the agent keeps answering.
          if ((done / CHUNK) % 16 === 15) await new Promise((r) => setImmediate(r));
        }
        done += n;
      }
      pos += e.length;
    }
  } finally {
    await fh.close();
  }
  if (pos !== virtualSize) throw new BackendError(`hash ${file}: map covers ${pos} of ${virtualSize} bytes`, 'internal');
  return hash.digest('hex');
}
