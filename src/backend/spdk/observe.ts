import { hostSocketPath } from '../../contract/layout.js';
import type { ImagePhase, ObservedController, ObservedDisk, ObservedImage, ObservedState } from '../types.js';
import { classifyLvol, goldenName, imageOfSnapshot, lvolAlias, parseControllerName } from './naming.js';
import type { Bdev, Lvol, VhostController } from '../../spdk/schemas.js';
import { bdevSizeBytes, lvolInfoOf } from './schemas.js';
import { hydratedPercent } from './hydration.js';

const MiB = 1024 * 1024;

/** What this process knows about an import that SPDK's listing cannot tell (download, errors). */
export interface ImportProgress {
  /** Never 'hydrating': that phase says disks can clone the image already (a lazy golden). */
  phase: Exclude<ImagePhase, 'ready' | 'hydrating'>;
  sizeBytes?: number;
  message?: string;
}

export interface ObserveInput {
  lvsName: string;
  vhostDir: string;
  lvols: readonly Lvol[];
  bdevs: readonly Bdev[];
  controllers: readonly VhostController[];
  /** Imports running (or failed) in this process, by image name. */
  imports: ReadonlyMap<string, ImportProgress>;
  /** Lazy images' hydration as this process runs it (paused/failed messages), by image name. */
  lazy?: ReadonlyMap<string, { message?: string; failed: boolean; unreachableSince?: number }>;
  /** The lvstore's cluster size: a lazy image's hydrated percentage counts clusters. */
  clusterBytes?: number;
  /** Exported images: how many peer nodes are connected to each export now. */
  peerReaders?: ReadonlyMap<string, number>;
}

/** Indexes bdevs by name, alias and UUID: controllers name their bdev by UUID. */
export class BdevIndex {
  private readonly byKey = new Map<string, Bdev>();
  constructor(bdevs: readonly Bdev[]) {
    for (const b of bdevs) {
      this.byKey.set(b.name, b);
      for (const a of b.aliases) this.byKey.set(a, b);
      if (b.uuid) this.byKey.set(b.uuid, b);
    }
  }
  get(key: string): Bdev | undefined {
    return this.byKey.get(key);
  }
}

/** The lvol alias (`lvs/name`) of a bdev of our lvstore, else its bdev name. */
export function diskRefOf(bdev: Bdev, lvsName: string): string {
  const prefix = `${lvsName}/`;
  if (bdev.name.startsWith(prefix)) return bdev.name;
  return bdev.aliases.find((a) => a.startsWith(prefix)) ?? bdev.name;
}

/** Maps SPDK's three listings onto the backend's view. Pure: the tests feed it fixtures. */
export function buildObservedState(input: ObserveInput): ObservedState {
  const { lvsName } = input;
  const index = new BdevIndex(input.bdevs);
  const ours = input.lvols.filter((l) => l.lvs.name === lvsName);

  const parentOf = new Map<string, string>();
  const childCount = new Map<string, number>();
  /** Children that are VM disks (a golden's cloneCount), counted in the same pass. */
  const diskChildCount = new Map<string, number>();
  for (const l of ours) {
    const bdev = index.get(l.uuid) ?? index.get(l.alias);
    const parent = bdev ? lvolInfoOf(bdev)?.base_snapshot : undefined;
    if (parent !== undefined) {
      parentOf.set(l.name, parent);
      childCount.set(parent, (childCount.get(parent) ?? 0) + 1);
      if (classifyLvol(l.name).role === 'disk') diskChildCount.set(parent, (diskChildCount.get(parent) ?? 0) + 1);
    }
  }
  const sizeOf = (l: Lvol): number => {
    const b = index.get(l.uuid) ?? index.get(l.alias);
    return b ? bdevSizeBytes(b) : 0;
  };

  const images = new Map<string, ObservedImage>();
  const disks: ObservedDisk[] = [];
  const stale = new Set<string>();
  const lazy: Array<{ image: string; lvol: Lvol }> = [];
  for (const l of ours) {
    const role = classifyLvol(l.name);
    if (role.role === 'golden') {
      // Disks cloned from the golden's fan-outs count as its clones.
      let clones = 0;
      for (const [parent, n] of diskChildCount) if (imageOfSnapshot(parent) === role.image) clones += n;
      images.set(role.image, { name: role.image, phase: 'ready', sizeBytes: sizeOf(l), ref: l.alias, cloneCount: clones });
    } else if (role.role === 'fanout' || role.role === 'diskHelper') {
      continue;
    } else if (role.role === 'lazy') {
      if (role.part === 'lazy') lazy.push({ image: role.image, lvol: l });
    } else if (role.role === 'importing') {
      stale.add(role.image);
    } else {
      const parent = parentOf.get(l.name);
      const image = parent !== undefined ? imageOfSnapshot(parent) : undefined;
      disks.push({
        id: role.id,
        ref: l.alias,
        sizeBytes: sizeOf(l),
        ...(image !== undefined ? { image } : {}),
        dependents: childCount.get(l.name) ?? 0,
        owned: true,
      });
    }
  }
  for (const { image, lvol } of lazy) {
    const disksOfLazy = diskChildCount.get(lvol.name) ?? 0;
    const ready = images.get(image);
    // Hydrated: the lazy golden is an empty snapshot between the golden and its disks, which
    // the golden's cloneCount already counts (imageOfSnapshot knows the lazy golden).
    if (ready) continue;
    const run = input.lazy?.get(image);
    const size = sizeOf(lvol);
    const percent = hydratedPercent(ours, image, size, input.clusterBytes ?? 4 * MiB);
    images.set(image, {
      name: image,
      phase: run?.failed ? 'failed' : 'hydrating',
      sizeBytes: size,
      ref: lvol.alias,
      cloneCount: disksOfLazy,
      ...(percent !== undefined ? { hydratedPercent: percent } : {}),
      ...(run?.unreachableSince !== undefined ? { sourceUnreachableSinceMs: run.unreachableSince } : {}),
      message: run?.message ?? (lvol.is_degraded ? 'lazy golden degraded: its source is not attached' : `hydrating${percent !== undefined ? ` ${percent}%` : ''}`),
    });
  }
  for (const image of stale) {
    if (images.has(image)) continue; // a left-over of a finished import: the golden is what counts
    const running = input.imports.get(image);
    images.set(image, {
      name: image,
      phase: running?.phase ?? 'failed',
      sizeBytes: running?.sizeBytes ?? 0,
      ref: lvolAlias(lvsName, goldenName(image)),
      cloneCount: 0,
      message: running?.message ?? 'interrupted import (the next ensureImage redoes it)',
    });
  }
  for (const [image, p] of input.imports) {
    if (images.has(image)) continue;
    images.set(image, {
      name: image,
      phase: p.phase,
      sizeBytes: p.sizeBytes ?? 0,
      ref: lvolAlias(lvsName, goldenName(image)),
      cloneCount: 0,
      ...(p.message !== undefined ? { message: p.message } : {}),
    });
  }

  for (const [image, n] of input.peerReaders ?? []) {
    const img = images.get(image);
    if (img) img.peerReaders = n;
  }

  const controllers: ObservedController[] = [];
  for (const c of input.controllers) {
    if (!parseControllerName(c.ctrlr)) continue;
    const served = c.backend_specific.block?.bdev ?? undefined;
    const bdev = served !== undefined ? index.get(served) : undefined;
    controllers.push({
      name: c.ctrlr,
      diskRef: bdev ? diskRefOf(bdev, lvsName) : (served ?? ''),
      readonly: c.backend_specific.block?.readonly ?? false,
      socketPath: c.socket || hostSocketPath(input.vhostDir, c.ctrlr),
      sessions: c.sessions.length,
    });
  }

  const byName = <T extends { name: string }>(a: T, b: T): number => a.name.localeCompare(b.name);
  return {
    images: [...images.values()].sort(byName),
    disks: disks.sort((a, b) => a.id.localeCompare(b.id)),
    controllers: controllers.sort(byName),
  };
}

export type ClonePlan = { ok: true; sizeMiB: number; resize: boolean } | { ok: false; reason: string };

/**
 * Size of a disk cloned from a golden image of `goldenBytes` (SPDK rounds lvols up to whole
 * clusters, so the golden may be a little larger than the image). `minBytes` is the smallest
 * capacity accepted: the exact image size when known, else the golden size less a cluster.
 */
export function planCloneSize(capacityBytes: number | undefined, goldenBytes: number, minBytes: number): ClonePlan {
  const goldenMiB = ceilMiB(goldenBytes);
  if (capacityBytes === undefined) return { ok: true, sizeMiB: goldenMiB, resize: false };
  if (!Number.isFinite(capacityBytes) || capacityBytes <= 0) {
    return { ok: false, reason: `capacity ${capacityBytes} must be a positive number of bytes` };
  }
  if (capacityBytes < minBytes) {
    return { ok: false, reason: `capacity ${capacityBytes} bytes is smaller than the image (${minBytes} bytes)` };
  }
  const wantMiB = ceilMiB(capacityBytes);
  return wantMiB > goldenMiB ? { ok: true, sizeMiB: wantMiB, resize: true } : { ok: true, sizeMiB: goldenMiB, resize: false };
}

/** Bytes an lvol of `sizeMiB` really gets: SPDK rounds up to whole clusters. */
export function lvolBytes(sizeMiB: number, clusterBytes: number): number {
  return Math.ceil((sizeMiB * MiB) / clusterBytes) * clusterBytes;
}

export function ceilMiB(bytes: number): number {
  return Math.ceil(bytes / MiB);
}
