import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../../log.js';
import { fetchImage, removePartFiles, type FetchOptions } from '../image-source.js';
import { BackendError, type ImageSpec, type ObservedDisk, type ObservedImage } from '../types.js';
import type { GoldenForClone } from './disks.js';
import type { QsdLayout } from './layout.js';
import type { LazyGoldens } from './lazy.js';

/**
 * The images story of the qsd driver: a golden is either a complete raw file (downloaded,
 * verified, then renamed into place) or a lazy qcow2 golden that hydrates in the daemon
 * (lazy.ts). This class picks the path and lists both.
 */

export interface QsdImagesDeps {
  layout: QsdLayout;
  qemuImg: string;
  log: Logger;
  fetch: Pick<FetchOptions, 'timeoutMs' | 'idleTimeoutMs' | 'maxRedirects'> | undefined;
  lazy: LazyGoldens;
  /** Lazy images from http(s) origins (raw format); a peer source is always lazy. */
  lazyOrigins: boolean;
  listDisks(): Promise<ObservedDisk[]>;
}

export class QsdImages {
  private readonly importing = new Map<string, Promise<ObservedImage>>();

  constructor(private readonly d: QsdImagesDeps) {}

  /** Whether this spec becomes a lazy golden (a peer, or an http(s) raw origin when enabled). */
  private isLazy(spec: ImageSpec): boolean {
    if (spec.peer !== undefined) return true;
    return this.d.lazyOrigins && 'http' in spec.source && spec.format === 'raw';
  }

  ensure(spec: ImageSpec, signal?: AbortSignal): Promise<ObservedImage> {
    let golden: string;
    try {
      golden = this.d.layout.goldenPath(spec.name);
    } catch (err) {
      return Promise.reject(err);
    }
    const inflight = this.importing.get(spec.name);
    if (inflight) return inflight;
    const job = (async (): Promise<ObservedImage> => {
      const existing = await fs.stat(golden).catch(() => undefined);
      if (existing) {
        // Only a complete, verified import is ever renamed to this name.
        await fs.chmod(golden, 0o400);
        return this.info(spec.name, existing.size);
      }
      // A lazy golden already made (or being made) keeps its path whatever the options say now.
      if (this.isLazy(spec) || (await this.d.lazy.has(spec.name))) {
        const lazy = await this.d.lazy.ensure(spec, signal);
        if (lazy) return lazy;
      }
      const log = this.d.log.child({ image: spec.name });
      const got = await fetchImage(spec, golden, {
        ...this.d.fetch,
        signal,
        mode: 0o400,
        qemuImgBinary: this.d.qemuImg,
        logger: log,
      });
      return this.info(spec.name, got.sizeBytes);
    })().finally(() => this.importing.delete(spec.name));
    this.importing.set(spec.name, job);
    return job;
  }

  private async info(name: string, sizeBytes: number): Promise<ObservedImage> {
    const ref = this.d.layout.goldenPath(name);
    const disks = await this.d.listDisks();
    return { name, phase: 'ready', sizeBytes, ref, cloneCount: disks.filter((d) => d.image === name).length };
  }

  /** The golden a new disk of `image` clones: the complete raw file, else a lazy golden. */
  async goldenFor(image: string): Promise<GoldenForClone | undefined> {
    const file = this.d.layout.goldenPath(image);
    const st = await fs.stat(file).catch(() => undefined);
    if (st) return { file, format: 'raw', sizeBytes: st.size };
    return this.d.lazy.goldenFor(image);
  }

  async delete(name: string): Promise<void> {
    const golden = this.d.layout.goldenPath(name);
    const clones = (await this.d.listDisks()).filter((d) => d.image === name);
    if (clones.length > 0) {
      throw new BackendError(
        `image ${name}: ${clones.length} disk(s) are clones of it (${clones.map((d) => d.id).join(', ')})`,
        'busy',
      );
    }
    await this.d.lazy.delete(name);
    await fs.rm(golden, { force: true });
    await removePartFiles(golden);
    this.d.log.info({ event: 'image.deleted', image: name }, 'image deleted');
  }

  async list(disks: ObservedDisk[]): Promise<ObservedImage[]> {
    const { imagesDir } = this.d.layout;
    const names = await fs.readdir(imagesDir).catch(() => [] as string[]);
    const out: ObservedImage[] = [];
    for (const f of names) {
      if (!f.endsWith('.raw')) continue;
      const name = f.slice(0, -'.raw'.length);
      const st = await fs.stat(path.join(imagesDir, f)).catch(() => undefined);
      if (!st) continue;
      const ref = path.join(imagesDir, f);
      out.push({ name, phase: 'ready', sizeBytes: st.size, ref, cloneCount: disks.filter((d) => d.image === name).length });
    }
    for (const img of await this.d.lazy.list(disks)) if (!out.some((i) => i.name === img.name)) out.push(img);
    for (const name of this.importing.keys()) {
      if (!out.some((i) => i.name === name)) {
        out.push({ name, phase: 'importing', sizeBytes: 0, ref: this.d.layout.goldenPath(name), cloneCount: 0 });
      }
    }
    return out;
  }
}
