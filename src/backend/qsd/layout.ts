import fs from 'node:fs/promises';
import path from 'node:path';
import { bdevNameProblem } from '../../api/volumes.js';
import { checkFileName } from './naming.js';
import { QCOW2_PROBE_BYTES, parseQcow2Header, type Qcow2Header } from './qcow2.js';

/**
 * Where the qsd driver keeps things on disk (`stateDir`), which survives a daemon restart:
 *   images/<name>.raw        complete golden images, mode 0400 (never written)
 *   images/<name>.qcow2      lazy golden images: a qcow2 file whose backing is the image's
 *                            source until hydration ends (see lazy.ts), then standalone
 *   images/<name>.lazy.json  what a lazy golden hydrates from, and its verdict
 *   disks/<id>.qcow2         owned disks: overlays backed by a golden image, or blank qcow2
 *   disks/<id>.link          symlink to `<bdevDir>/<name>`, served as is (a `bdev` volume, not owned)
 *   disks/<id>.remote.json   a disk whose backing is another node's export (hydrate.ts)
 */
export class QsdLayout {
  readonly stateDir: string;
  readonly imagesDir: string;
  readonly disksDir: string;
  readonly bdevDir: string | undefined;

  constructor(stateDir: string, bdevDir: string | undefined) {
    this.stateDir = path.resolve(stateDir);
    this.imagesDir = path.join(this.stateDir, 'images');
    this.disksDir = path.join(this.stateDir, 'disks');
    this.bdevDir = bdevDir === undefined ? undefined : path.resolve(bdevDir);
  }

  goldenPath(name: string): string {
    return path.join(this.imagesDir, `${checkFileName('image name', name)}.raw`);
  }

  lazyGoldenPath(name: string): string {
    return path.join(this.imagesDir, `${checkFileName('image name', name)}.qcow2`);
  }

  lazyRecordPath(name: string): string {
    return path.join(this.imagesDir, `${checkFileName('image name', name)}.lazy.json`);
  }

  overlayPath(id: string): string {
    return path.join(this.disksDir, `${checkFileName('disk id', id)}.qcow2`);
  }

  linkPath(id: string): string {
    return path.join(this.disksDir, `${checkFileName('disk id', id)}.link`);
  }

  remoteRecordPath(id: string): string {
    return path.join(this.disksDir, `${checkFileName('disk id', id)}.remote.json`);
  }

  async readHeader(file: string): Promise<Qcow2Header | undefined> {
    const fh = await fs.open(file, 'r');
    try {
      const buf = Buffer.alloc(QCOW2_PROBE_BYTES);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      return parseQcow2Header(buf.subarray(0, bytesRead));
    } finally {
      await fh.close();
    }
  }

  /** The image a disk is a clone of, from its backing file name: a golden of ours, or none. */
  imageOfBacking(backing: string | undefined): string | undefined {
    if (!backing || path.dirname(backing) !== this.imagesDir) return undefined;
    if (backing.endsWith('.raw')) return path.basename(backing, '.raw');
    if (backing.endsWith('.qcow2')) return path.basename(backing, '.qcow2');
    return undefined;
  }

  /** A file a controller may open: one of our overlays, or an entry of the bdev directory. */
  servableFile(diskRef: string): boolean {
    if (path.dirname(diskRef) === this.disksDir && diskRef.endsWith('.qcow2')) return true;
    return this.bdevDir !== undefined && path.dirname(diskRef) === this.bdevDir && bdevNameProblem(path.basename(diskRef)) === undefined;
  }
}
