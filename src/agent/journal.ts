import { lstat, readFile, rename } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { VmiRefSchema } from '../api/status.js';
import { RemoteDiskRefSchema } from '../backend/remote.js';
import { silentLogger, type Logger } from '../log.js';
import { writeFileAtomic } from '../fsutil.js';

/**
 * The agent's memory across restarts, in `<stateDir>/journal.json`. Every backend call that
 * changes something is journaled: intent before the call, done after. The intent of a disk
 * creation already records the disk as ours, so a crash between the backend's create and
 * the agent's "done" still leaves the agent knowing it owns the disk (it is deleted when its
 * VMI goes, not mistaken for an orphan). Everything else is re-derived by the reconciler from
 * the backend's listing, so replay is simply "reconcile again".
 */

export const OwnedDiskSchema = z.object({
  vmi: VmiRefSchema,
  disk: z.string(),
  slot: z.string(),
  controller: z.string(),
  /**
   * `attached`: a disk another node exports, opened here (detached, never deleted). `remote`: a
   * local clone of another node's export (a migration target's; owned: deleted like any disk).
   */
  source: z.enum(['image', 'blank', 'bdev', 'attached', 'remote']),
  /** `remote`: the migration the clone was made for (an earlier copy of the id is not it). */
  migration: z.string().optional(),
  image: z.string().optional(),
  /** An attached disk's local ref (what its controller serves). */
  ref: z.string().optional(),
  createdAt: z.number(),
});
export type OwnedDisk = z.infer<typeof OwnedDiskSchema>;

export const PendingOpSchema = z.object({ action: z.string(), target: z.string(), startedAt: z.number() });
export type PendingOp = z.infer<typeof PendingOpSchema>;

export const JournalStateSchema = z.object({
  version: z.literal(1),
  seq: z.number().int().nonnegative(),
  /** Intents whose call has not been seen to finish. */
  pending: z.record(PendingOpSchema),
  /** Disks (and their controllers) this agent made, by disk id. */
  owned: z.record(OwnedDiskSchema),
  /** Last known slot per VMI uid. */
  vmiSlots: z.record(z.object({ slot: z.string(), namespace: z.string(), name: z.string() })),
  /** Last use (ms since epoch) per cached image: the LRU order survives restarts. */
  imageLastUse: z.record(z.number()),
  /** First time an orphan was seen (ms since epoch), by `disk:<id>` / `controller:<name>`. */
  orphans: z.record(z.number()),
  /**
   * Disks this node exports, by disk id, with the ref a remote node attaches. Journaled, not
   * observed: a qsd export's address is known only to the process that made it.
   */
  exports: z.record(z.object({ ref: RemoteDiskRefSchema, vmi: VmiRefSchema, disk: z.string() })).default({}),
});
export type JournalState = z.infer<typeof JournalStateSchema>;

export const emptyJournalState = (): JournalState => ({
  version: 1,
  seq: 0,
  pending: {},
  owned: {},
  vmiSlots: {},
  imageLastUse: {},
  orphans: {},
  exports: {},
});

export class JournalError extends Error {
  override readonly name = 'JournalError';
  constructor(message: string, readonly file: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export interface JournalOptions {
  logger?: Logger;
  /** Test hook: runs before each write lands (a test can make it hang to "crash"). */
  beforeWrite?: () => Promise<void>;
}

export class Journal {
  readonly file: string;
  private generation = 0;
  private persisted = 0;
  private writer: Promise<void> | undefined;
  /** Intents left unfinished by a previous run: superseded once a reconcile round has converged on them. */
  replayed: string[] = [];
  private waiters: Array<{ gen: number; resolve: () => void; reject: (e: unknown) => void }> = [];

  private constructor(
    stateDir: string,
    private current: JournalState,
    private readonly opts: JournalOptions,
  ) {
    this.file = path.join(stateDir, 'journal.json');
  }

  /** Loads the journal; a corrupt file is set aside (kept for inspection) and the agent starts from the backend's listing. */
  static async open(stateDir: string, opts: JournalOptions = {}): Promise<Journal> {
    const file = path.join(stateDir, 'journal.json');
    const log = opts.logger ?? silentLogger;
    let state = emptyJournalState();
    let text: string | undefined;
    try {
      // Anything but a regular file (a directory, a device, a link) is refused by name, not with a stack trace.
      const st = await lstat(file);
      if (!st.isFile()) {
        const what = st.isDirectory() ? 'a directory' : st.isSymbolicLink() ? 'a symbolic link' : 'not a regular file';
        throw new JournalError(`journal ${file} is ${what}; move it out of the state dir and start again`, file);
      }
      text = await readFile(file, 'utf8');
    } catch (e) {
      if (e instanceof JournalError) throw e;
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new JournalError(`cannot read journal ${file}: ${(e as Error).message}`, file, { cause: e });
    }
    if (text !== undefined) {
      let parsed: z.SafeParseReturnType<unknown, JournalState>;
      try {
        parsed = JournalStateSchema.safeParse(JSON.parse(text));
      } catch (e) {
        parsed = { success: false, error: new z.ZodError([{ code: 'custom', path: [], message: (e as Error).message }]) };
      }
      if (parsed.success) state = parsed.data;
      else {
        const aside = `${file}.corrupt-${Date.now()}`;
        await rename(file, aside);
        log.error({ event: 'journal-corrupt', file, aside, error: parsed.error.issues[0]?.message }, 'journal unreadable; set aside, starting from the backend listing');
      }
    }
    const j = new Journal(stateDir, state, opts);
    const pending = Object.entries(state.pending);
    j.replayed = pending.map(([id]) => id);
    if (pending.length) log.info({ event: 'journal-replay', pending: pending.map(([id, p]) => ({ id, ...p })) }, 'unfinished actions from before the restart; reconciling');
    return j;
  }

  /** The current state; read-only for callers (change it with `update`). */
  get state(): Readonly<JournalState> {
    return this.current;
  }

  /** Applies a change and resolves once it is on disk (writes are grouped). */
  update(change: (s: JournalState) => void): Promise<void> {
    change(this.current);
    this.generation++;
    return this.flush();
  }

  /** Records the intent to run `action` on `target`; returns the op id for `done`. */
  async intent(action: string, target: string, change?: (s: JournalState) => void, now = Date.now()): Promise<string> {
    const id = String(++this.current.seq);
    await this.update((s) => {
      s.pending[id] = { action, target, startedAt: now };
      change?.(s);
    });
    return id;
  }

  async done(id: string, change?: (s: JournalState) => void): Promise<void> {
    await this.update((s) => {
      delete s.pending[id];
      change?.(s);
    });
  }

  /** Forgets the previous run's unfinished intents (a full reconcile round has redone or undone them). */
  async settleReplayed(): Promise<void> {
    if (!this.replayed.length) return;
    const ids = this.replayed;
    this.replayed = [];
    await this.update((s) => {
      for (const id of ids) delete s.pending[id];
    });
  }

  private flush(): Promise<void> {
    const gen = this.generation;
    const p = new Promise<void>((resolve, reject) => this.waiters.push({ gen, resolve, reject }));
    this.writer ??= this.writeLoop().finally(() => {
      this.writer = undefined;
    });
    return p;
  }

  private async writeLoop(): Promise<void> {
    while (this.persisted < this.generation) {
      const gen = this.generation;
      const text = `${JSON.stringify(this.current)}\n`;
      try {
        await this.opts.beforeWrite?.();
        await writeFileAtomic(this.file, text);
        this.persisted = gen;
        this.settle((w) => w.gen <= gen, (w) => w.resolve());
      } catch (e) {
        const err = new JournalError(`cannot write journal: ${(e as Error).message}`, this.file, { cause: e });
        // Drop the failed generation from the queue; the next update tries again.
        this.persisted = gen;
        this.settle((w) => w.gen <= gen, (w) => w.reject(err));
      }
    }
  }

  private settle(match: (w: { gen: number }) => boolean, fn: (w: { resolve: () => void; reject: (e: unknown) => void }) => void): void {
    const now = this.waiters.filter(match);
    this.waiters = this.waiters.filter((w) => !match(w));
    now.forEach(fn);
  }
}
