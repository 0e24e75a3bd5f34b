import type { Logger } from '../../log.js';
import { BackendError } from '../types.js';
import type { LazyRecord } from './lazy-record.js';
import { nodeSize, type LazySource } from './sources.js';
import type { QsdSession } from './session.js';

/**
 * Switching a hydrating lazy golden onto another source of the same content (a peer that died
 * mid-hydration is replaced by another peer or the origin). Verified on qemu-storage-daemon 7.2
 * with disks (overlays whose backing is the golden) served and written meanwhile:
 *
 *   blockdev-add the new source node (a new name: the old one is still the golden's backing)
 *   -> its size must be the golden's -> cancel the stream (a read in flight to a dead NBD peer
 *   ends after its reconnect-delay) -> blockdev-reopen the golden with `backing` = the new node
 *   -> record the new source -> blockdev-del the old node -> block-stream again (it skips what
 *   the golden already holds).
 *
 * The reopen drains the golden: guest reads of hydrated blocks never touch the source; a guest
 * read that was waiting on the dead peer fails (EIO) when that node's reconnect-delay ends, with
 * or without the switch, and every read after the switch is served by the new source. The
 * golden's qcow2 header keeps the first source's name: it is never read (the backing is always
 * given by node name, from the record), only its presence says "still hydrating". Since the
 * chain no longer matches the headers, QEMU names the golden and every disk over it `json:{...}`
 * from then on; the session's node listing takes each node's own file out of it (plainFileName).
 */

/** The golden's options while it hydrates; the same on open and on reopen (a reopen resets what it leaves out). */
export function hydratingGoldenOptions(g: string, backing: string): Record<string, unknown> {
  return {
    driver: 'qcow2',
    'node-name': g,
    'read-only': false,
    file: `${g}-f`,
    // Always ours: the source node while it hydrates.
    backing,
    // Zero blocks stay unallocated, and a tiny L2 cache of small entries is written back as the
    // stream moves on, so a daemon killed mid-way loses at most a few MiB of hydration (no QMP
    // command flushes a node; eviction does).
    'detect-zeroes': 'on',
    'l2-cache-entry-size': L2_ENTRY_BYTES,
    'l2-cache-size': 2 * L2_ENTRY_BYTES,
  };
}

/** One L2 cache entry maps 64 clusters (4 MiB with 64 KiB clusters). */
const L2_ENTRY_BYTES = 512;

export interface RetargetContext {
  session: QsdSession;
  log: Logger;
  /** The golden's node name, and the name of its source node of each generation. */
  goldenNode: string;
  sourceNode(generation: number): string;
  record(): Promise<LazyRecord | undefined>;
  save(rec: LazyRecord): Promise<void>;
  /** Opens the golden (and its current source) if it is not open; its node name. */
  openGolden(): Promise<string>;
  openSource(source: LazySource, node: string): Promise<void>;
  cancelStream(): Promise<void>;
  /** The image's source nodes open in the daemon now. */
  sourceNodes(): Promise<string[]>;
  /** Forgets the pause and starts the stream again. */
  startStream(): Promise<void>;
}

const sameSource = (a: LazySource, b: LazySource): boolean => JSON.stringify(a) === JSON.stringify(b);

/**
 * Inside session.serial. Idempotent: a golden already on `source` only has its stream (re)started;
 * a golden that stands alone (ready, verifying) needs no source and is left as it is.
 * Throws `notFound` (no lazy golden), `checksum` (it failed verification), `invalid` (the new
 * source's size differs), `transport` (the new source cannot be opened); on every error the
 * golden keeps the source it had.
 */
export async function retargetNow(c: RetargetContext, name: string, source: LazySource): Promise<LazyRecord> {
  const rec = await c.record();
  if (!rec) throw new BackendError(`image ${name}: no lazy golden on this node to switch`, 'notFound');
  if (rec.state === 'failed') throw new BackendError(`image ${name}: ${rec.message ?? 'failed'}`, 'checksum');
  if (rec.state !== 'hydrating') return rec;
  if (sameSource(rec.source, source)) {
    await c.startStream();
    return rec;
  }
  const { session } = c;
  const generation = (rec.generation ?? 0) + 1;
  const node = c.sourceNode(generation);
  // A node of this name is left over from a switch that crashed before it was recorded.
  if ((await c.sourceNodes()).includes(node)) await session.deleteNode(node);
  await c.openSource(source, node);
  const size = await nodeSize(session, node);
  if (size !== rec.sizeBytes) {
    await session.deleteNode(node);
    throw new BackendError(`image ${name}: the new source is ${size} bytes, the golden ${rec.sizeBytes}; not switched`, 'invalid');
  }
  const next: LazyRecord = { ...rec, source, generation };
  if (!(await session.blockNodes()).some((n) => n['node-name'] === c.goldenNode)) {
    // Not open (a new daemon whose old source does not answer): it opens on the new one.
    await c.save(next);
    await c.openGolden();
    c.log.info({ event: 'image.source.switched', from: rec.source.kind, to: source.kind, generation }, 'hydration switched to another source');
    await c.startStream();
    return next;
  }
  const g = c.goldenNode;
  await c.cancelStream();
  try {
    await session.exec('blockdev-reopen', { options: [hydratingGoldenOptions(g, node)] }, `image ${name}: switch the golden's source`);
  } catch (e) {
    await session.deleteNode(node).catch(() => undefined);
    await c.startStream().catch(() => undefined);
    throw e;
  }
  await c.save(next);
  for (const old of (await c.sourceNodes()).filter((n) => n !== node)) {
    // A node that will not close (still busy) is only a leak until the golden is whole.
    await session.deleteNode(old).catch((e: unknown) => c.log.warn({ event: 'image.source.close-failed', node: old, err: (e as Error).message }, 'old source node not closed'));
  }
  c.log.info({ event: 'image.source.switched', from: rec.source.kind, to: source.kind, generation }, 'hydration switched to another source');
  await c.startStream();
  return next;
}
