import { z } from 'zod';
import { readJsonFile, writeFileAtomic } from '../../fsutil.js';
import { BackendError } from '../types.js';
import type { QsdLayout } from './layout.js';
import { LazySourceSchema } from './sources.js';

/**
 * `images/<name>.lazy.json`: what a lazy golden hydrates from and how far it got (hydrating ->
 * verifying -> ready | failed). Written before the golden file exists, so that a restart
 * finds every golden's source; a verdict is kept across restarts.
 */
export const LazyRecordSchema = z
  .object({
    version: z.literal(1),
    name: z.string(),
    source: LazySourceSchema,
    /** How often the source was switched (retarget.ts); names the source's block node. Absent: 0. */
    generation: z.number().int().nonnegative().optional(),
    sizeBytes: z.number().int().nonnegative(),
    sha256: z.string().optional(),
    state: z.enum(['hydrating', 'verifying', 'ready', 'failed']),
    message: z.string().optional(),
  })
  .strict();
export type LazyRecord = z.output<typeof LazyRecordSchema>;

export async function readLazyRecord(layout: QsdLayout, name: string): Promise<LazyRecord | undefined> {
  const parsed = await readJsonFile(layout.lazyRecordPath(name), LazyRecordSchema);
  if (!parsed) return undefined;
  if (!parsed.success) throw new BackendError(`image ${name}: lazy record ${layout.lazyRecordPath(name)} is unreadable: ${parsed.error.message}`, 'internal');
  return parsed.data;
}

export async function writeLazyRecord(layout: QsdLayout, rec: LazyRecord): Promise<void> {
  await writeFileAtomic(layout.lazyRecordPath(rec.name), JSON.stringify(rec), { mode: 0o600 });
}
