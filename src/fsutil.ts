import { open, readFile, rename, mkdir, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { z } from 'zod';

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

/**
 * A JSON state file checked against its schema: undefined when there is no file; otherwise the
 * schema's verdict (text that is not JSON fails it like a wrong shape does).
 */
export async function readJsonFile<S extends z.ZodTypeAny>(file: string, schema: S): Promise<z.SafeParseReturnType<unknown, z.output<S>> | undefined> {
  const text = await readFile(file, 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return schema.safeParse(json) as z.SafeParseReturnType<unknown, z.output<S>>;
}
