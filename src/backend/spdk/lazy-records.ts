import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { RemoteDiskRefSchema, type RemoteDiskRef } from '../remote.js';
import { BackendError } from '../types.js';

/**
 * The records of lazy objects under `<stateDir>/lazy/`: what SPDK cannot tell after its own
 * restart (which export a degraded clone reads, which file a lazy golden copies). One file per
 * object, written (atomically) before the attach and removed once nothing depends on it:
 * `image-<name>.json` and `disk-<id>.json` name a peer's export, `local-<name>.json` a file
 * on the node.
 */

/** A lazy golden or disk over another node's export, and whether the disk was asked to hydrate. */
export type RecordKind = 'image' | 'disk';
export interface PeerRecord {
  ref: RemoteDiskRef;
  hydrate: boolean;
}

/**
 * A lazy golden over the node's own file (v24.09+): what is needed to make its aio bdev again
 * after a restart, and the file's digest (checked before the file becomes a source again).
 */
const LocalRecordSchema = z
  .object({
    local: z.literal(true),
    /** The file's size: the image padded with zeros to whole clusters. */
    sizeBytes: z.number().int().positive(),
    /** sha256 of the file's first `dataBytes` bytes (the image as fetched); the rest is zeros. */
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    dataBytes: z.number().int().positive(),
  })
  .strict()
  .refine((r) => r.dataBytes <= r.sizeBytes, { message: 'dataBytes is larger than sizeBytes', path: ['dataBytes'] });
export type LocalRecord = z.output<typeof LocalRecordSchema>;

export class LazyRecords {
  constructor(private readonly stateDir: string) {}

  private file(kind: RecordKind | 'local', name: string): string {
    return path.join(this.stateDir, 'lazy', `${kind}-${name}.json`);
  }

  private async put(file: string, body: unknown): Promise<void> {
    await fs.mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.tmp`;
    await fs.writeFile(tmp, JSON.stringify(body));
    await fs.rename(tmp, file);
  }

  /** The record's text, or undefined when there is none. */
  private async text(kind: RecordKind | 'local', name: string): Promise<string | undefined> {
    try {
      return await fs.readFile(this.file(kind, name), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new BackendError(`lazy ${kind === 'local' ? 'image' : kind} ${name}: cannot read its record: ${String(e)}`, 'internal', { cause: e });
    }
  }

  async write(kind: RecordKind, name: string, ref: RemoteDiskRef, extra: { hydrate?: boolean } = {}): Promise<void> {
    await this.put(this.file(kind, name), { ref, ...extra });
  }

  async read(kind: RecordKind, name: string): Promise<PeerRecord | undefined> {
    const text = await this.text(kind, name);
    if (text === undefined) return undefined;
    try {
      const raw = JSON.parse(text) as { ref?: unknown; hydrate?: unknown };
      return { ref: RemoteDiskRefSchema.parse(raw.ref), hydrate: raw.hydrate === true };
    } catch (e) {
      throw new BackendError(`lazy ${kind} ${name}: its record ${this.file(kind, name)} is not valid: ${String(e)}`, 'internal', { cause: e });
    }
  }

  async drop(kind: RecordKind | 'local', name: string): Promise<void> {
    await fs.rm(this.file(kind, name), { force: true });
  }

  /** Every record on the node (none when the directory does not exist). */
  async list(): Promise<Array<{ kind: RecordKind | 'local'; name: string }>> {
    let names: string[];
    try {
      names = await fs.readdir(path.join(this.stateDir, 'lazy'));
    } catch {
      return [];
    }
    return names.flatMap((f) => {
      const m = /^(image|disk|local)-(.+)\.json$/.exec(f);
      return m?.[1] !== undefined && m[2] !== undefined ? [{ kind: m[1] as RecordKind | 'local', name: m[2] }] : [];
    });
  }

  /** The record of a lazy golden over the node's file, if image `name` is or was hydrating from one. */
  async readLocal(name: string): Promise<LocalRecord | undefined> {
    const text = await this.text('local', name);
    if (text === undefined) return undefined;
    try {
      return LocalRecordSchema.parse(JSON.parse(text));
    } catch (e) {
      throw new BackendError(`lazy image ${name}: its record ${this.file('local', name)} is not valid: ${String(e)}`, 'internal', { cause: e });
    }
  }

  async writeLocal(name: string, rec: LocalRecord): Promise<void> {
    await this.put(this.file('local', name), rec);
  }
}
