import { readFile, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { SlotStatusSchema } from '../src/api/status.js';
import { formatZodError } from '../src/api/errors.js';
import { notReadyReason, slotStatusFile } from './slots.js';

export class SlotNotReadyError extends Error {
  override readonly name = 'SlotNotReadyError';
  constructor(
    readonly slot: string,
    readonly reason: string,
    waitedMs: number,
  ) {
    super(`${slot} is not ready after ${Math.round(waitedMs / 100) / 10}s: ${reason}`);
  }
}

export interface WaitOptions {
  stateDir: string;
  slot: string;
  timeoutMs: number;
  pollMs?: number;
  /**
   * Reports written before this time (ms since epoch) are ignored: they describe the VMI that
   * held the slot before this allocation. The agent can only learn the new pod's slot after
   * Allocate, so its first valid report is necessarily newer.
   */
  notBefore?: number;
  signal?: AbortSignal;
}

/** Slack for file systems whose mtime is coarser than the clock. */
const MTIME_SLACK_MS = 5;

/** One look at the slot's report: undefined when ready, else why not. */
export async function checkSlot(stateDir: string, slot: string, notBefore?: number): Promise<string | undefined> {
  const file = slotStatusFile(stateDir, slot);
  let text: string;
  let mtimeMs: number;
  try {
    [text, { mtimeMs }] = await Promise.all([readFile(file, 'utf8'), stat(file)]);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return `the agent has not reported on this slot yet (no ${file})`;
    return `cannot read ${file}: ${(e as Error).message}`;
  }
  if (notBefore !== undefined && mtimeMs + MTIME_SLACK_MS < notBefore) return `the agent's last report predates this allocation (${file})`;
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return `${file} is not JSON`;
  }
  const res = SlotStatusSchema.safeParse(doc);
  if (!res.success) return `${file} is not a slot status: ${formatZodError('', res.error).join('; ')}`;
  return notReadyReason(res.data, slot);
}

/**
 * Resolves once the agent reports the slot ready; throws SlotNotReadyError with the last
 * reason when the time is up. Polls: the file is tiny and the agent replaces it by rename,
 * which a watch on the file itself would lose.
 */
export async function waitForSlotReady(opts: WaitOptions): Promise<void> {
  const started = Date.now();
  const poll = opts.pollMs ?? 100;
  for (;;) {
    const reason = await checkSlot(opts.stateDir, opts.slot, opts.notBefore);
    if (reason === undefined) return;
    const waited = Date.now() - started;
    if (waited >= opts.timeoutMs) throw new SlotNotReadyError(opts.slot, reason, waited);
    if (opts.signal?.aborted) throw new SlotNotReadyError(opts.slot, `the device plugin is shutting down; last: ${reason}`, waited);
    try {
      await sleep(Math.min(poll, opts.timeoutMs - waited), undefined, { signal: opts.signal });
    } catch {
      // aborted: the loop reports it with the reason
    }
  }
}
