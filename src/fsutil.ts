import { open, rename, mkdir, unlink } from 'node:fs/promises';
import path from 'node:path';

let tmpCounter = 0;

/**
 * Writes a file so that a reader (or a crash) sees either the old or the new content, never
 * a torn one: write a temp file in the same directory, fsync it, rename over, fsync the dir.
 */
export async function writeFileAtomic(file: string, data: string, opts: { mode?: number; fsyncDir?: boolean } = {}): Promise<void> {
  const dir = path.dirname(file);
  await mkdir(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${tmpCounter++}.tmp`);
  const fh = await open(tmp, 'w', opts.mode ?? 0o644);
  try {
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (e) {
    // A full disk (ENOSPC) or any other failure leaves no temp file behind, one per attempt.
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
  if (opts.fsyncDir ?? true) {
    const dh = await open(dir, 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  }
}
