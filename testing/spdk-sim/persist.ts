import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { PersistedLvstoreSchema, type LvstoreMeta } from './state.js';

/**
 * Blobstore metadata of lvstores on aio files, keyed by the file's path. It stands for the
 * metadata SPDK writes into the file itself: it survives the simulator being killed, and
 * `bdev_aio_create` of the same file loads it back. Without a state directory it lives in
 * memory, which still lets an aio bdev be deleted and re-created within one process.
 */
export class LvstoreStore {
  private readonly memory = new Map<string, LvstoreMeta>();

  constructor(private readonly stateDir?: string) {
    if (stateDir) fs.mkdirSync(stateDir, { recursive: true });
  }

  private fileFor(filename: string): string {
    const digest = createHash('sha256').update(path.resolve(filename)).digest('hex').slice(0, 32);
    return path.join(this.stateDir ?? '', `lvs-${digest}.json`);
  }

  load(filename: string): LvstoreMeta | undefined {
    if (!this.stateDir) return structuredClone(this.memory.get(path.resolve(filename)));
    let text: string;
    try {
      text = fs.readFileSync(this.fileFor(filename), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    const parsed = PersistedLvstoreSchema.parse(JSON.parse(text));
    return parsed.lvstore;
  }

  /** Atomic: a kill at any point leaves either the old or the new metadata, never a torn file. */
  save(filename: string, meta: LvstoreMeta): void {
    if (!this.stateDir) {
      this.memory.set(path.resolve(filename), structuredClone(meta));
      return;
    }
    const target = this.fileFor(filename);
    const tmp = `${target}.${process.pid}.tmp`;
    const body = JSON.stringify({ version: 1, filename: path.resolve(filename), lvstore: meta });
    const fd = fs.openSync(tmp, 'w');
    try {
      fs.writeSync(fd, body);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, target);
  }

  remove(filename: string): void {
    if (!this.stateDir) {
      this.memory.delete(path.resolve(filename));
      return;
    }
    fs.rmSync(this.fileFor(filename), { force: true });
  }
}
