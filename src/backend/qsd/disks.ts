import fs from 'node:fs/promises';
import path from 'node:path';
import { bdevNameProblem } from '../../api/volumes.js';
import type { Logger } from '../../log.js';
import { run } from '../image-source.js';
import { BackendError, type DiskSpec, type ObservedController, type ObservedDisk } from '../types.js';
import { toBackendError } from './errors.js';
import type { QsdLayout } from './layout.js';
import type { QsdSession } from './session.js';

/**
 * The disks story of the qsd driver: a disk is a qcow2 overlay file (backed by a golden, or
 * blank) or a link to an admin-provided file in the bdev directory. Files only: opening them
 * in the daemon is the controllers' story.
 */

/** The golden file a disk clones, as images.ts finds it; `problem` forbids new clones. */
export interface GoldenForClone {
  file: string;
  format: 'raw' | 'qcow2';
  sizeBytes: number;
  problem?: string;
}

export interface QsdDisksDeps {
  session: QsdSession;
  layout: QsdLayout;
  qemuImg: string;
  log: Logger;
  controllersNow(): Promise<ObservedController[]>;
  /** The golden of an image for a new clone; undefined when the image is not cached. */
  goldenFor(image: string): Promise<GoldenForClone | undefined>;
}

export class QsdDisks {
  constructor(private readonly d: QsdDisksDeps) {}

  async list(): Promise<ObservedDisk[]> {
    const { layout } = this.d;
    const files = await fs.readdir(layout.disksDir).catch(() => [] as string[]);
    const out: ObservedDisk[] = [];
    for (const f of files) {
      const full = path.join(layout.disksDir, f);
      try {
        if (f.endsWith('.qcow2')) {
          const h = await layout.readHeader(full);
          if (!h) continue;
          const image = layout.imageOfBacking(h.backingFile);
          out.push({ id: f.slice(0, -6), ref: full, sizeBytes: h.virtualSize, ...(image ? { image } : {}), dependents: 0, owned: true });
        } else if (f.endsWith('.link')) {
          const target = await fs.readlink(full);
          const st = await fs.stat(target).catch(() => undefined);
          out.push({ id: f.slice(0, -5), ref: target, sizeBytes: st?.size ?? 0, dependents: 0, owned: false });
        }
      } catch (err) {
        // A disk deleted while we list it is simply gone.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    return out;
  }

  async ensureNow(spec: DiskSpec): Promise<ObservedDisk> {
    const { layout } = this.d;
    const log = this.d.log.child({ disk: spec.id });
    const what = `disk ${spec.id}`;
    if (spec.capacityBytes !== undefined && (!Number.isSafeInteger(spec.capacityBytes) || spec.capacityBytes <= 0)) {
      throw new BackendError(`${what}: capacityBytes ${spec.capacityBytes} must be a positive integer`, 'invalid');
    }
    if (spec.source.kind === 'bdev') return this.ensureBdevDisk(spec.id, spec.source.bdev);

    const overlay = layout.overlayPath(spec.id);
    let backing: { file: string; format: 'raw' | 'qcow2' } | undefined;
    let capacity = spec.capacityBytes;
    if (spec.source.kind === 'image') {
      const golden = await this.d.goldenFor(spec.source.image);
      if (!golden) {
        throw new BackendError(
          `${what}: image ${spec.source.image} is not cached (no golden file ${layout.goldenPath(spec.source.image)})`,
          'notFound',
        );
      }
      if (golden.problem !== undefined) {
        throw new BackendError(`${what}: image ${spec.source.image} cannot be cloned: ${golden.problem}`, 'invalid');
      }
      backing = { file: golden.file, format: golden.format };
      capacity ??= golden.sizeBytes;
      if (capacity < golden.sizeBytes) {
        throw new BackendError(
          `${what}: capacity ${capacity} bytes is smaller than image ${spec.source.image} (${golden.sizeBytes} bytes)`,
          'invalid',
        );
      }
    } else if (capacity === undefined) {
      throw new BackendError(`${what}: a blank disk needs capacityBytes`, 'invalid');
    }

    const existing = await layout.readHeader(overlay).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null;
      throw toBackendError(err, what);
    });
    if (existing === undefined) {
      throw new BackendError(`${what}: ${overlay} exists but is not a qcow2 image; refusing to touch it`, 'invalid');
    }
    if (existing) {
      if (existing.backingFile !== backing?.file) {
        throw new BackendError(
          `${what}: exists with backing ${existing.backingFile ?? '(none)'}, not ${backing?.file ?? '(none)'}; refusing to replace it`,
          'invalid',
        );
      }
      if (capacity > existing.virtualSize) await this.resize(overlay, capacity, log);
      else if (capacity < existing.virtualSize) {
        log.warn({ event: 'disk.shrink.refused', have: existing.virtualSize, want: capacity }, 'disks never shrink');
      }
      return this.info(spec.id, overlay);
    }

    // Made under a temporary name and renamed: a crash never leaves a half-made overlay.
    // A qcow2 golden is held open (read-write, while it hydrates) by the daemon: `-u` names it
    // without opening it (and its remote source); the size is given, so nothing is probed.
    const tmp = `${overlay}.part`;
    await fs.rm(tmp, { force: true });
    const backingArgs = backing ? ['-F', backing.format, '-b', backing.file, ...(backing.format === 'qcow2' ? ['-u'] : [])] : [];
    const argv = ['create', '-q', '-f', 'qcow2', ...backingArgs, tmp, String(capacity)];
    const res = await run(this.d.qemuImg, argv).catch((err: unknown) => {
      throw toBackendError(err, `${what}: cannot run ${this.d.qemuImg}`);
    });
    if (res.code !== 0) {
      await fs.rm(tmp, { force: true });
      throw new BackendError(`${what}: qemu-img create failed (exit ${res.code}): ${res.stderr.trim()}`, 'internal');
    }
    await fs.rename(tmp, overlay);
    log.info({ event: 'disk.created', source: spec.source.kind, capacity }, 'disk created');
    return this.info(spec.id, overlay);
  }

  /**
   * `bdev: <name>` is `<bdevDir>/<name>`: one path component, checked against the schema's
   * rule again (the agent may be fed by files, not only by the webhook), never a file of ours.
   */
  private async resolveBdev(what: string, name: string): Promise<string> {
    const { bdevDir, stateDir } = this.d.layout;
    const problem = bdevNameProblem(name) ?? (name.includes('/') ? 'must be one file name in the bdev directory (no "/")' : undefined);
    if (problem) throw new BackendError(`${what}: bdev "${name}" ${problem}`, 'invalid');
    if (bdevDir === undefined) {
      throw new BackendError(`${what}: bdev "${name}": this node serves no bdev volumes (the agent has no --bdev-dir)`, 'invalid');
    }
    const target = path.join(bdevDir, name);
    const real = await fs.realpath(target).catch(() => undefined);
    if (real === undefined) throw new BackendError(`${what}: bdev "${name}" does not exist in ${bdevDir}`, 'notFound');
    const st = await fs.stat(real);
    if (!st.isFile() && !st.isBlockDevice()) {
      throw new BackendError(`${what}: bdev "${name}" is not a file or block device`, 'invalid');
    }
    if (real === stateDir || real.startsWith(`${stateDir}${path.sep}`)) {
      throw new BackendError(`${what}: bdev "${name}" resolves into the agent's own state (a golden image or a disk)`, 'invalid');
    }
    return target;
  }

  private async ensureBdevDisk(id: string, name: string): Promise<ObservedDisk> {
    const what = `disk ${id}`;
    const target = await this.resolveBdev(what, name);
    const st = await fs.stat(target);
    const link = this.d.layout.linkPath(id);
    const current = await fs.readlink(link).catch(() => undefined);
    if (current !== undefined && current !== target) {
      throw new BackendError(`${what}: already refers to ${current}, not ${target}`, 'invalid');
    }
    if (current === undefined) {
      const tmp = `${link}.part`;
      await fs.rm(tmp, { force: true });
      await fs.symlink(target, tmp);
      await fs.rename(tmp, link);
    }
    return { id, ref: target, sizeBytes: st.size, dependents: 0, owned: false };
  }

  async info(id: string, overlay: string): Promise<ObservedDisk> {
    const h = await this.d.layout.readHeader(overlay);
    if (!h) throw new BackendError(`disk ${id}: ${overlay} is not a qcow2 image`, 'internal');
    const image = this.d.layout.imageOfBacking(h.backingFile);
    return { id, ref: overlay, sizeBytes: h.virtualSize, ...(image ? { image } : {}), dependents: 0, owned: true };
  }

  /** Grows a disk; through QMP when an export holds it open (QEMU locks the file). */
  private async resize(overlay: string, capacity: number, log: Logger): Promise<void> {
    const { session } = this.d;
    const node = session.connected ? (await session.blockNodes()).find((n) => n.file === overlay && n.drv === 'qcow2') : undefined;
    if (node?.['node-name']) {
      await session.exec('block_resize', { 'node-name': node['node-name'], size: capacity }, `resize ${overlay}`);
    } else {
      // Opened without its backing: growing an overlay needs none, and a lazy golden's chain
      // is held by the daemon and ends at a remote source.
      const spec = JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: overlay }, backing: null });
      const res = await run(this.d.qemuImg, ['resize', '-q', `json:${spec}`, String(capacity)]);
      if (res.code !== 0) throw new BackendError(`resize ${overlay}: ${res.stderr.trim()}`, 'internal');
    }
    log.info({ event: 'disk.resized', capacity }, 'disk grown');
  }

  /** `beforeRemove` runs once no controller serves the disk (closes what else holds it). */
  async deleteNow(id: string, beforeRemove?: () => Promise<void>): Promise<void> {
    const { layout } = this.d;
    const overlay = layout.overlayPath(id);
    const link = layout.linkPath(id);
    const target = (await fs.readlink(link).catch(() => undefined)) ?? overlay;
    if (this.d.session.connected) {
      const users = (await this.d.controllersNow()).filter((c) => c.diskRef === target);
      if (users.length) {
        throw new BackendError(`disk ${id}: served by controller ${users.map((c) => c.name).join(', ')}`, 'busy');
      }
    }
    await beforeRemove?.();
    await Promise.all([overlay, `${overlay}.part`, link, `${link}.part`].map((f) => fs.rm(f, { force: true })));
    this.d.log.info({ event: 'disk.deleted', disk: id }, 'disk deleted');
  }

  /** The file a disk id is stored in (overlay or linked file); throws notFound if none. */
  async file(id: string): Promise<{ file: string; format: 'qcow2' | 'raw' }> {
    const overlay = this.d.layout.overlayPath(id);
    if (await fs.stat(overlay).then(() => true, () => false)) return { file: overlay, format: 'qcow2' };
    const target = await fs.readlink(this.d.layout.linkPath(id)).catch(() => undefined);
    if (target !== undefined) return { file: target, format: 'raw' };
    throw new BackendError(`disk ${id} does not exist on this node`, 'notFound');
  }
}
