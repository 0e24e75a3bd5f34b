import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { backoffMs, type Backoff } from '../../backoff.js';
import type { Logger } from '../../log.js';
import { SpdkError } from '../../spdk/errors.js';
import type { Bdev, Lvol } from '../../spdk/schemas.js';
import { adrfamOf, hostNqnOf, imageExportNqn, RemoteDiskRefSchema, type RemoteDiskRef } from '../remote.js';
import { BackendError, type DiskHydration, type ImageExportOptions, type ImageSpec, type ObservedDisk, type ObservedImage } from '../types.js';
import type { SpdkContext } from './context.js';
import { toBackendError } from './errors.js';
import type { LvstoreKeeper } from './lvstore.js';
import { stableUuid } from './lvstore.js';
import {
  checkDiskId,
  checkImageName,
  classifyLvol,
  diskBaseName,
  diskHydrateName,
  diskSourceControllerName,
  goldenName,
  lazyBaseName,
  lazyGoldenName,
  lazyHydrateName,
  lvolAlias,
  nvmeBdevOf,
  peerControllerName,
  sourceBdevName,
} from './naming.js';
import { bdevSizeBytes, distinctHosts, lvolInfoOf, NvmfControllerListSchema } from './schemas.js';

/**
 * Lazy images and lazy disks on spdk_tgt (see naming.ts for the objects):
 *
 * - A lazy golden: the peer's export is attached as NVMe bdev `lzi-<image>n1` (its UUID is the
 *   image's id: exporters set the namespace NGUID to it, so any node holding the image can
 *   satisfy the clones after a restart), `img-<image>.lazy` is a snapshot of an external-snapshot
 *   clone of it, and disks clone that at once.
 * - Hydration, leak-free (v24.09+, bdev_lvol_set_parent): a helper clone `img-<image>.hyd` that
 *   no VM reads is inflated and snapshotted as the golden `img-<image>`; the lazy golden is then
 *   repointed onto the golden, so no thread keeps an I/O channel to the NVMe bdev, and the
 *   controller detaches at once. Inflating the lazy golden itself would leave every VM thread
 *   that read through it holding a channel: detach answers -110 and leaks until those VMs stop.
 *   v24.01 has no set_parent: there the lazy golden is inflated in place and renamed (the
 *   detach may then wait for running VMs, which SPDK finishes on its own when they stop).
 * - Lazy disks (migration): `<disk>` is an external-snapshot clone of another node's disk
 *   (`lzd-<disk>n1`); hydrateDisk inflates a helper `<disk>.hyd`, snapshots it as `<disk>.hsnap`
 *   and repoints the disk onto it, then detaches.
 *
 * Attaches use `ctrlr_loss_timeout_sec: -1`: a source that restarts pauses reads and hydration
 * (the controller reconnects every few seconds) instead of failing them. What SPDK cannot tell
 * after its own restart (which export a degraded clone reads) is kept in a record per object
 * under `<stateDir>/lazy/`, written before the attach and removed once nothing depends on it.
 */

const RECONNECT_DELAY_SEC = 2;
const CONNECT_TIMEOUT_US = 10_000_000;
const RETRY: Backoff = { initialMs: 500, maxMs: 30_000 };

const RecordSchema = RemoteDiskRefSchema;

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

/** Where a lazy golden reads its unread blocks from. */
type ImageSource = { kind: 'peer'; ref: RemoteDiskRef } | { kind: 'file'; rec: LocalRecord };

interface Hydration {
  state: 'hydrating' | 'paused' | 'failed';
  message?: string;
  /** Since when (ms since the epoch) its source has been unreachable, while it is. */
  unreachableSince?: number;
  task: Promise<void>;
}

/** The id exporters give an image's namespace (NGUID and UUID): derived from its name only. */
export const imageUuid = (image: string): string => stableUuid(`image:${image}`);
/** NGUID form (32 hex digits, no dashes) of a UUID. */
export const nguidOf = (uuid: string): string => uuid.replace(/-/g, '').toUpperCase();

/** A controller with several paths (a switched source) is usable while any of them is. */
const pathState = (ctrlrs: ReadonlyArray<{ state?: string | undefined }> | undefined): string | undefined =>
  ctrlrs?.some((c) => c.state === 'enabled') ? 'enabled' : ctrlrs?.[0]?.state;

/**
 * The controller ids an image export of this node hands out: a range of its own (from the node
 * name), because a node that switched its source reads two peers' exports of one subsystem NQN
 * as two paths of one controller, and SPDK refuses two paths with the same controller id.
 */
export function cntlidRange(nodeName: string | undefined): { min_cntlid: number; max_cntlid: number } | undefined {
  if (nodeName === undefined) return undefined;
  const block = createHash('sha256').update(nodeName).digest().readUInt32BE(0) % 1000;
  return { min_cntlid: 1 + block * 64, max_cntlid: 64 + block * 64 };
}

const isNotFound = (e: unknown): boolean => e instanceof SpdkError && e.kind === 'notFound';

export class LazyStore {
  private readonly images = new Map<string, Hydration>();
  private readonly disks = new Map<string, Hydration>();

  constructor(
    private readonly ctx: SpdkContext,
    private readonly keeper: LvstoreKeeper,
  ) {}

  private get canReparent(): boolean {
    return this.ctx.capabilities?.methods.has('bdev_lvol_set_parent') ?? false;
  }

  // ---- records --------------------------------------------------------------------------------

  private recordFile(kind: 'image' | 'disk', name: string): string {
    return path.join(this.ctx.cfg.stateDir, 'lazy', `${kind}-${name}.json`);
  }

  private async writeRecord(kind: 'image' | 'disk', name: string, ref: RemoteDiskRef, extra: { hydrate?: boolean } = {}): Promise<void> {
    const file = this.recordFile(kind, name);
    await fs.mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.tmp`;
    await fs.writeFile(tmp, JSON.stringify({ ref, ...extra }));
    await fs.rename(tmp, file);
  }

  private async readRecord(kind: 'image' | 'disk', name: string): Promise<{ ref: RemoteDiskRef; hydrate: boolean } | undefined> {
    let text: string;
    try {
      text = await fs.readFile(this.recordFile(kind, name), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new BackendError(`lazy ${kind} ${name}: cannot read its record: ${String(e)}`, 'internal', { cause: e });
    }
    try {
      const raw = JSON.parse(text) as { ref?: unknown; hydrate?: unknown };
      return { ref: RecordSchema.parse(raw.ref), hydrate: raw.hydrate === true };
    } catch (e) {
      throw new BackendError(`lazy ${kind} ${name}: its record ${this.recordFile(kind, name)} is not valid: ${String(e)}`, 'internal', { cause: e });
    }
  }

  private async dropRecord(kind: 'image' | 'disk', name: string): Promise<void> {
    await fs.rm(this.recordFile(kind, name), { force: true });
  }

  private async records(): Promise<Array<{ kind: 'image' | 'disk' | 'local'; name: string }>> {
    let names: string[];
    try {
      names = await fs.readdir(path.join(this.ctx.cfg.stateDir, 'lazy'));
    } catch {
      return [];
    }
    return names.flatMap((f) => {
      const m = /^(image|disk|local)-(.+)\.json$/.exec(f);
      return m?.[1] !== undefined && m[2] !== undefined ? [{ kind: m[1] as 'image' | 'disk' | 'local', name: m[2] }] : [];
    });
  }

  /** Whether image `name` has a lazy record (it is or was hydrating from a peer). */
  async hasImageRecord(name: string): Promise<boolean> {
    return (await this.readRecord('image', name)) !== undefined;
  }

  private localRecordFile(name: string): string {
    return path.join(this.ctx.cfg.stateDir, 'lazy', `local-${name}.json`);
  }

  /** The record of a lazy golden over the node's file, if image `name` is or was hydrating from one. */
  async localRecord(name: string): Promise<LocalRecord | undefined> {
    const file = this.localRecordFile(name);
    let text: string;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new BackendError(`lazy image ${name}: cannot read its record: ${String(e)}`, 'internal', { cause: e });
    }
    try {
      return LocalRecordSchema.parse(JSON.parse(text));
    } catch (e) {
      throw new BackendError(`lazy image ${name}: its record ${file} is not valid: ${String(e)}`, 'internal', { cause: e });
    }
  }

  private async writeLocalRecord(name: string, rec: LocalRecord): Promise<void> {
    const file = this.localRecordFile(name);
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(`${file}.tmp`, JSON.stringify(rec));
    await fs.rename(`${file}.tmp`, file);
  }

  /** Lazy goldens over a local file need a stable aio uuid (v24.09+) and set_parent. */
  get canLazyLocal(): boolean {
    return (this.ctx.capabilities?.aioUuid ?? false) && this.canReparent;
  }

  // ---- attach / detach ------------------------------------------------------------------------

  /** Attaches `ref` as NVMe controller `controller` (idempotent); resolves with its namespace's bdev. */
  private async attach(controller: string, ref: RemoteDiskRef, what: string): Promise<Bdev> {
    const { ctx } = this;
    if (ref.transport !== 'nvmf-tcp') throw new BackendError(`${what}: spdk reads NVMe-oF/TCP exports only, not ${ref.transport}`, 'invalid');
    const bdevName = nvmeBdevOf(controller);
    let bdev = await ctx.getBdev(bdevName);
    if (!bdev) {
      const nodeName = ctx.cfg.nodeName;
      try {
        await ctx.api.bdevNvmeAttachController({
          name: controller,
          trtype: 'TCP',
          adrfam: ref.adrfam === 'ipv6' ? 'IPv6' : 'IPv4',
          traddr: ref.host,
          trsvcid: String(ref.port),
          subnqn: ref.subnqn,
          ...(nodeName !== undefined ? { hostnqn: hostNqnOf(nodeName) } : {}),
          ctrlr_loss_timeout_sec: -1,
          reconnect_delay_sec: RECONNECT_DELAY_SEC,
          // SPDK's default CONNECT deadline (0.5 s) is missed by a busy peer; an I/O qpair torn
          // down mid-CONNECT then crashed real v25.09 (heap corruption) during the first examine.
          fabrics_connect_timeout_us: CONNECT_TIMEOUT_US,
        });
      } catch (e) {
        // -114: the controller exists (reconnecting, or a concurrent attach): its bdev decides.
        if (!(e instanceof SpdkError && (e.code === -114 || e.kind === 'exists'))) {
          const err = toBackendError(e, `${what}: attaching ${ref.subnqn} at ${ref.host}:${ref.port}`);
          throw new BackendError(`${err.message} (source unreachable)`, err.kind === 'invalid' || err.kind === 'internal' || err.kind === 'notFound' ? 'transport' : err.kind, { cause: e });
        }
      }
      await ctx.api.bdevWaitForExamine().catch(() => undefined);
      bdev = await ctx.getBdev(bdevName);
      if (!bdev) throw new BackendError(`${what}: ${ref.subnqn} at ${ref.host}:${ref.port} is attached but has no namespace 1 yet (source unreachable?)`, 'transport');
      ctx.log.info({ event: 'lazy.source.attached', controller, nqn: ref.subnqn, bdev: bdev.name }, 'lazy source attached');
    }
    const size = bdevSizeBytes(bdev);
    if (ref.sizeBytes > 0 && size !== ref.sizeBytes) throw new BackendError(`${what}: the source is ${size} bytes, its reference says ${ref.sizeBytes}`, 'invalid');
    if (size % ctx.lvstore.clusterBytes !== 0) {
      throw new BackendError(`${what}: the source (${size} bytes) is not whole ${ctx.lvstore.clusterBytes}-byte clusters; it cannot back a clone`, 'invalid');
    }
    return bdev;
  }

  /**
   * Moves a lazy golden's hydration onto another peer's export of the same image (its source
   * died): the export is added as a second path of the same NVMe controller (the same
   * subsystem NQN and namespace id, which SPDK checks), so the bdev the lazy golden names stays
   * and nothing is detached (detaching a source a clone names hangs or breaks its readers, the
   * recording's hazard); I/O waiting on the dead path, a running inflate included, goes on over
   * the new one. The record names the new export, so a restart attaches it. Idempotent. Throws
   * `notFound` (no lazy golden over a peer), `invalid` (another image or size, or SPDK refused
   * the path: namespace or controller id), `transport` (the export does not answer).
   */
  async retargetImage(name: string, ref: RemoteDiskRef): Promise<void> {
    checkImageName(name);
    const what = `image ${name}: switching source`;
    const rec = await this.readRecord('image', name);
    if (!rec) throw new BackendError(`image ${name}: no lazy golden over a peer on this node to switch`, 'notFound');
    if (ref.transport !== 'nvmf-tcp' || rec.ref.transport !== 'nvmf-tcp') throw new BackendError(`${what}: spdk reads NVMe-oF/TCP exports only`, 'invalid');
    if (JSON.stringify(rec.ref) === JSON.stringify(ref)) return;
    if (ref.subnqn !== rec.ref.subnqn) throw new BackendError(`${what}: ${ref.subnqn} is another image's export than ${rec.ref.subnqn}`, 'invalid');
    if (ref.sizeBytes > 0 && rec.ref.sizeBytes > 0 && ref.sizeBytes !== rec.ref.sizeBytes) {
      throw new BackendError(`${what}: the new export is ${ref.sizeBytes} bytes, the old one ${rec.ref.sizeBytes}`, 'invalid');
    }
    const { ctx } = this;
    const controller = peerControllerName(name);
    if (!(await ctx.getBdev(nvmeBdevOf(controller)))) {
      // Not attached (spdk_tgt restarted while the old peer was away): attach the new one; the
      // degraded clones come back when a bdev with the image id exists.
      await this.writeRecord('image', name, ref);
      await this.attach(controller, ref, what);
      ctx.log.info({ event: 'lazy.source.switched', image: name, nqn: ref.subnqn, traddr: ref.host, trsvcid: ref.port }, 'lazy source switched');
      return;
    }
    const nodeName = ctx.cfg.nodeName;
    try {
      // No `multipath` mode: each version's default is what the first path was attached with.
      await ctx.api.bdevNvmeAttachController({
        name: controller,
        trtype: 'TCP',
        adrfam: ref.adrfam === 'ipv6' ? 'IPv6' : 'IPv4',
        traddr: ref.host,
        trsvcid: String(ref.port),
        subnqn: ref.subnqn,
        ...(nodeName !== undefined ? { hostnqn: hostNqnOf(nodeName) } : {}),
        ctrlr_loss_timeout_sec: -1,
        reconnect_delay_sec: RECONNECT_DELAY_SEC,
        fabrics_connect_timeout_us: CONNECT_TIMEOUT_US,
      });
    } catch (e) {
      // -114: this path is there already.
      if (!(e instanceof SpdkError && (e.code === -114 || e.kind === 'exists'))) {
        const err = toBackendError(e, `${what}: adding ${ref.subnqn} at ${ref.host}:${ref.port} as a path`);
        throw new BackendError(err.message, err.kind === 'invalid' ? 'invalid' : 'transport', { cause: e });
      }
    }
    await this.writeRecord('image', name, ref);
    ctx.log.info({ event: 'lazy.source.switched', image: name, nqn: ref.subnqn, traddr: ref.host, trsvcid: ref.port }, 'lazy source switched (a second path)');
  }

  /** Whether the source controller is connected; a reconnecting one means 'paused'. */
  private async sourceState(controller: string): Promise<string | undefined> {
    try {
      const [c] = await this.ctx.api.bdevNvmeGetControllers({ name: controller });
      return pathState(c?.ctrlrs);
    } catch {
      return undefined;
    }
  }

  private async detach(controller: string, log: Logger): Promise<void> {
    try {
      await this.ctx.api.bdevNvmeDetachController({ name: controller });
      log.info({ event: 'lazy.source.detached', controller }, 'lazy source detached');
    } catch (e) {
      if (isNotFound(e)) return;
      // -110: a thread still holds an I/O channel to it (v24.01's in-place inflate with VMs
      // running): SPDK finishes the detach by itself once they stop. Nothing reads through it.
      log.warn({ event: 'lazy.source.detach_pending', controller, err: String(e) }, 'source detach pending until readers stop');
    }
  }

  /**
   * After a spdk_tgt restart, clones of a source that is not attached load degraded: attach
   * every recorded source again (same namespace UUID), so they come back by themselves.
   */
  async reattachAll(): Promise<void> {
    for (const r of await this.records()) {
      if (r.kind === 'local') {
        const local = await this.localRecord(r.name).catch(() => undefined);
        if (!local) continue;
        await this.fileSource(r.name, local).catch((e: unknown) => {
          this.ctx.log.warn({ event: 'lazy.source.recreate_failed', image: r.name, err: String(e) }, 'file source not made again; retried by hydration');
        });
        continue;
      }
      const rec = await this.readRecord(r.kind, r.name).catch(() => undefined);
      if (!rec) continue;
      const controller = r.kind === 'image' ? peerControllerName(r.name) : diskSourceControllerName(r.name);
      await this.attach(controller, rec.ref, `lazy ${r.kind} ${r.name}`).catch((e: unknown) => {
        this.ctx.log.warn({ event: 'lazy.source.reattach_failed', controller, err: String(e) }, 'source not reachable yet; retried by hydration');
      });
    }
  }

  /** Starts hydration of every recorded image (and disk asked to hydrate) that no task runs for. */
  async resume(): Promise<void> {
    for (const r of await this.records()) {
      if (r.kind === 'local' && !this.images.has(r.name)) {
        const rec = await this.localRecord(r.name).catch(() => undefined);
        if (rec) this.startImageHydration(r.name, { kind: 'file', rec });
      } else if (r.kind === 'image' && !this.images.has(r.name)) {
        const rec = await this.readRecord('image', r.name).catch(() => undefined);
        if (rec) this.startImageHydration(r.name, { kind: 'peer', ref: rec.ref });
      } else if (r.kind === 'disk' && !this.disks.has(r.name)) {
        const rec = await this.readRecord('disk', r.name).catch(() => undefined);
        if (rec?.hydrate) this.startDiskHydration(r.name, rec.ref);
      }
    }
  }

  // ---- lazy golden ----------------------------------------------------------------------------

  /** ensureImage for a peer's golden (or an image with a record): lazy golden now, hydration after. */
  async ensureLazyImage(spec: ImageSpec): Promise<ObservedImage> {
    const { ctx } = this;
    const name = spec.name;
    checkImageName(name);
    const log = ctx.log.child({ image: name });
    await this.keeper.ready();
    const rec = await this.readRecord('image', name);
    const ref = spec.peer ?? rec?.ref;
    if (!ref) throw new BackendError(`image ${name}: no peer to read it from`, 'invalid');
    if (ref.transport !== 'nvmf-tcp') throw new BackendError(`image ${name}: peer: spdk reads NVMe-oF/TCP exports only, not ${ref.transport}`, 'invalid');
    const lvols = await ctx.listLvols();
    const has = (n: string): boolean => lvols.some((l) => l.name === n);
    if (has(goldenName(name))) {
      if (rec || has(lazyGoldenName(name))) this.startImageHydration(name, { kind: 'peer', ref }); // finishes the repoint and detach
      return this.describe(name);
    }
    await this.writeRecord('image', name, ref);
    const controller = peerControllerName(name);
    if (rec && JSON.stringify(rec.ref) !== JSON.stringify(ref) && !has(lazyGoldenName(name))) {
      // Another peer before anything reads through the old one: the old controller goes.
      log.info({ event: 'lazy.peer.changed', to: `${ref.host}:${ref.port}` }, 'reading the image from another peer');
      await this.detach(controller, log);
    }
    const src = await this.attach(controller, ref, `image ${name}`);
    if (src.uuid !== imageUuid(name)) {
      throw new BackendError(`image ${name}: the peer export's namespace id ${src.uuid} is not the image's id ${imageUuid(name)} (a different image?)`, 'invalid');
    }
    const sizeBytes = bdevSizeBytes(src);
    if (spec.sizeBytes !== undefined && spec.sizeBytes > sizeBytes) {
      throw new BackendError(`image ${name}: the peer's golden is ${sizeBytes} bytes, smaller than the declared ${spec.sizeBytes}`, 'invalid');
    }
    const lazyAlias = lvolAlias(ctx.lvs, lazyGoldenName(name));
    if (has(lazyBaseName(name))) await ctx.deleteLvol(lvolAlias(ctx.lvs, lazyBaseName(name)));
    if (!has(lazyGoldenName(name))) {
      await ctx.api.bdevLvolCloneBdev({ bdev: src.name, lvs_name: ctx.lvs, clone_name: lazyGoldenName(name) }).catch((e: unknown) => {
        throw toBackendError(e, `image ${name}: external-snapshot clone of ${src.name}`);
      });
    }
    // Read-only makes it cloneable; again after a crash between the two (it answers true twice).
    // Not a snapshot of the clone: on real v25.09 a snapshot of an esnap clone whose NVMe
    // source was attached with ctrlr_loss_timeout_sec never answers (its I/O qpair never connects).
    await ctx.snapshotLocks.run(lazyAlias, () => ctx.api.bdevLvolSetReadOnly({ name: lazyAlias })).catch((e: unknown) => {
      throw toBackendError(e, `image ${name}: making the lazy golden read-only`);
    });
    if (!has(lazyGoldenName(name))) log.info({ event: 'image.lazy.ready', sizeBytes, peer: `${ref.host}:${ref.port}` }, 'lazy golden ready: disks boot from the peer while it hydrates');
    this.startImageHydration(name, { kind: 'peer', ref });
    return this.describe(name);
  }

  /**
   * ensureImage for an image already on the node as a file (`ctx.imageFile`, verified by the
   * fetch; `rec` carries its digest and padded size): the aio bdev over it gets the image id as
   * uuid, so the lazy golden's clones find it again after a spdk_tgt restart; disks clone the
   * lazy golden at once and hydration copies the file into the lvstore underneath them.
   */
  async ensureFileImage(name: string, given?: LocalRecord): Promise<ObservedImage> {
    const { ctx } = this;
    checkImageName(name);
    const log = ctx.log.child({ image: name });
    await this.keeper.ready();
    if (!this.canLazyLocal) throw new BackendError(`image ${name}: spdk ${ctx.capabilities?.version ?? '?'} cannot keep an aio bdev's uuid; a local file is imported in full`, 'invalid');
    const rec = given ?? (await this.localRecord(name));
    if (!rec) throw new BackendError(`image ${name}: no local file recorded to read it from`, 'invalid');
    const lvols = await ctx.listLvols();
    const has = (n: string): boolean => lvols.some((l) => l.name === n);
    if (has(goldenName(name))) {
      this.startImageHydration(name, { kind: 'file', rec }); // finishes the repoint and drops the file
      return this.describe(name);
    }
    if (given) await this.writeLocalRecord(name, rec);
    const src = await this.fileSource(name, rec, given !== undefined);
    const lazyAlias = lvolAlias(ctx.lvs, lazyGoldenName(name));
    if (!has(lazyGoldenName(name))) {
      await ctx.api.bdevLvolCloneBdev({ bdev: src.name, lvs_name: ctx.lvs, clone_name: lazyGoldenName(name) }).catch((e: unknown) => {
        throw toBackendError(e, `image ${name}: external-snapshot clone of ${src.name}`);
      });
    }
    await ctx.snapshotLocks.run(lazyAlias, () => ctx.api.bdevLvolSetReadOnly({ name: lazyAlias })).catch((e: unknown) => {
      throw toBackendError(e, `image ${name}: making the lazy golden read-only`);
    });
    if (!has(lazyGoldenName(name))) log.info({ event: 'image.lazy.ready', sizeBytes: rec.sizeBytes, source: 'file' }, 'lazy golden ready: disks boot from the node\'s file while it hydrates');
    this.startImageHydration(name, { kind: 'file', rec });
    return this.describe(name);
  }

  /**
   * The aio bdev over the node's file, uuid = the image id (idempotent). Made again only after
   * the file is checked against its record (`justVerified`: its digest was just taken).
   */
  private async fileSource(name: string, rec: LocalRecord, justVerified = false): Promise<Bdev> {
    const { ctx } = this;
    const bdevName = sourceBdevName(name);
    const existing = await ctx.getBdev(bdevName);
    if (existing) {
      if (existing.uuid !== imageUuid(name)) throw new BackendError(`image ${name}: bdev ${bdevName} exists with uuid ${existing.uuid}, not the image id ${imageUuid(name)}`, 'internal');
      return existing;
    }
    const file = ctx.imageFile(name);
    let size: number;
    try {
      size = (await fs.stat(file)).size;
    } catch (e) {
      throw new BackendError(`image ${name}: its file ${file} is gone (${String(e)}); delete the image to fetch it again`, 'notFound', { cause: e });
    }
    if (size !== rec.sizeBytes) throw new BackendError(`image ${name}: its file is ${size} bytes, its record says ${rec.sizeBytes}`, 'checksum');
    if (!justVerified) {
      const digest = await sha256File(file, ctx.lifetime.signal, rec.dataBytes);
      if (digest !== rec.sha256) throw new BackendError(`image ${name}: its file's sha256 ${digest} is not the recorded ${rec.sha256}`, 'checksum');
      if (!(await zeroFrom(file, rec.dataBytes, ctx.lifetime.signal))) throw new BackendError(`image ${name}: its file's padding after byte ${rec.dataBytes} is not zeros`, 'checksum');
    }
    await ctx.api.bdevAioCreate({ name: bdevName, filename: file, block_size: ctx.lvstore.blockSize, uuid: imageUuid(name) }).catch((e: unknown) => {
      if (!(e instanceof SpdkError && e.kind === 'exists')) throw toBackendError(e, `image ${name}: aio bdev over ${file}`);
    });
    await ctx.api.bdevWaitForExamine().catch(() => undefined);
    const bdev = await ctx.getBdev(bdevName);
    if (!bdev) throw new BackendError(`image ${name}: aio bdev ${bdevName} not listed after creating it`, 'internal');
    ctx.log.info({ event: 'lazy.source.file', image: name, bdev: bdevName, uuid: bdev.uuid }, 'file source ready');
    return bdev;
  }

  /** Deletes the file source once no lvol names it as its external snapshot. */
  private async dropFileSource(name: string, log: Logger): Promise<void> {
    const { ctx } = this;
    const bdevName = sourceBdevName(name);
    const src = await ctx.getBdev(bdevName);
    if (src) {
      const readers: string[] = [];
      for (const l of await ctx.listLvols()) {
        if (l.is_degraded) readers.push(l.name);
        else if (l.is_esnap_clone) {
          const info = lvolInfoOf((await ctx.getBdev(l.alias)) ?? ({ driver_specific: {} } as Bdev));
          if (info?.external_snapshot_name === bdevName || info?.external_snapshot_name === src.uuid) readers.push(l.name);
        }
      }
      if (readers.length > 0) throw new BackendError(`image ${name}: ${bdevName} still backs ${readers.join(', ')}; not deleting it`, 'busy');
      await ctx.api.bdevAioDelete({ name: bdevName }).catch((e: unknown) => {
        if (!isNotFound(e)) throw toBackendError(e, `image ${name}: deleting ${bdevName}`);
      });
      log.info({ event: 'lazy.source.dropped', bdev: bdevName }, 'file source deleted');
    }
    await fs.rm(ctx.imageFile(name), { force: true });
    await fs.rm(this.localRecordFile(name), { force: true });
  }

  /** Image entry for ensureImage: the golden when it exists, else the lazy golden. */
  private async describe(name: string): Promise<ObservedImage> {
    const { ctx } = this;
    const lvols = await ctx.listLvols();
    const golden = await ctx.getBdev(lvolAlias(ctx.lvs, goldenName(name)));
    const lazy = await ctx.getBdev(lvolAlias(ctx.lvs, lazyGoldenName(name)));
    const disks = (b: Bdev | undefined): number => (lvolInfoOf(b ?? ({ driver_specific: {} } as Bdev))?.clones ?? []).filter((c) => classifyLvol(c).role === 'disk').length;
    if (golden) {
      return { name, phase: 'ready', sizeBytes: bdevSizeBytes(golden), ref: lvolAlias(ctx.lvs, goldenName(name)), cloneCount: disks(golden) + disks(lazy) };
    }
    if (!lazy) throw new BackendError(`image ${name}: neither golden nor lazy golden exists`, 'notFound');
    const h = this.images.get(name);
    const percent = hydratedPercent(lvols, name, bdevSizeBytes(lazy), ctx.lvstore.clusterBytes);
    return {
      name,
      phase: h?.state === 'failed' ? 'failed' : 'hydrating',
      sizeBytes: bdevSizeBytes(lazy),
      ref: lvolAlias(ctx.lvs, lazyGoldenName(name)),
      cloneCount: disks(lazy),
      ...(percent !== undefined ? { hydratedPercent: percent } : {}),
      ...(h?.message !== undefined ? { message: h.message } : {}),
    };
  }

  /** What observe() adds for a lazy image: message (paused, failed) of the running hydration. */
  imageMessages(): Map<string, { message?: string; failed: boolean; unreachableSince?: number }> {
    return new Map(
      [...this.images].map(([k, h]) => [
        k,
        { ...(h.message !== undefined ? { message: h.message } : {}), failed: h.state === 'failed', ...(h.state === 'paused' && h.unreachableSince !== undefined ? { unreachableSince: h.unreachableSince } : {}) },
      ]),
    );
  }

  /**
   * A source that went away does not fail a running inflate (the controller reconnects and the
   * copy waits): look at the controllers of running hydrations and call those 'paused'.
   */
  async refreshSourceStates(): Promise<void> {
    if (this.images.size === 0 && this.disks.size === 0) return;
    let ctrls: Array<{ name: string; ctrlrs: Array<{ state?: string | undefined }> }>;
    try {
      ctrls = await this.ctx.api.bdevNvmeGetControllers();
    } catch {
      return;
    }
    const stateOf = (name: string): string | undefined => pathState(ctrls.find((c) => c.name === name)?.ctrlrs);
    const mark = (h: Hydration, controller: string): void => {
      if (h.state === 'failed') return;
      const state = stateOf(controller);
      if (state !== undefined && state !== 'enabled') {
        h.state = 'paused';
        h.message = `hydration paused (source ${controller}: ${state})`;
        h.unreachableSince ??= Date.now();
      } else if (h.state === 'paused' && h.message?.startsWith('hydration paused (source ') === true) {
        h.state = 'hydrating';
        delete h.message;
        delete h.unreachableSince;
      }
    };
    for (const [name, h] of this.images) mark(h, peerControllerName(name));
    for (const [id, h] of this.disks) mark(h, diskSourceControllerName(id));
  }

  /** Resolves once the running hydration of `name` ends (tests, close()). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.images.values(), ...this.disks.values()].map((h) => h.task));
  }

  /** Whether a hydration task for the image runs (deleteImage refuses). */
  imageBusy(name: string): boolean {
    return this.images.has(name);
  }

  private startImageHydration(name: string, source: ImageSource): void {
    if (this.images.has(name)) return;
    const h: Hydration = { state: 'hydrating', task: Promise.resolve() };
    h.task = this.retrying(h, `image ${name}`, () => this.hydrateImage(name, source)).finally(() => {
      if (this.images.get(name) === h && h.state !== 'failed') this.images.delete(name);
    });
    this.images.set(name, h);
  }

  /** Runs `step` until it succeeds; transient failures pause it (with backoff), others fail it. */
  private async retrying(h: Hydration, what: string, step: () => Promise<void>): Promise<void> {
    const signal = this.ctx.lifetime.signal;
    for (let attempt = 0; !signal.aborted; attempt++) {
      try {
        await step();
        h.state = 'hydrating';
        delete h.message;
        delete h.unreachableSince;
        return;
      } catch (e) {
        if (signal.aborted) return;
        const err = e instanceof BackendError ? e : toBackendError(e, what);
        // EIO from an inflate: the source went away mid-copy. Resumable: it copies what is missing.
        const transient = err.transient || /Input\/output error|unreachable/i.test(err.message);
        if (!transient) {
          h.state = 'failed';
          h.message = `hydration failed: ${err.message}`;
          this.ctx.log.warn({ event: 'lazy.hydrate.failed', what, kind: err.kind, err: err.message }, 'hydration failed');
          return;
        }
        h.state = 'paused';
        h.message = `hydration paused (${err.message})`;
        this.ctx.log.warn({ event: 'lazy.hydrate.paused', what, attempt, err: err.message }, 'hydration paused; retrying');
        await abortableSleep(backoffMs(attempt + 1, RETRY), signal);
      }
    }
  }

  private async hydrateImage(name: string, source: ImageSource): Promise<void> {
    const { ctx } = this;
    const log = ctx.log.child({ image: name });
    await this.keeper.ready();
    const lvols = await ctx.listLvols();
    const has = (n: string): boolean => lvols.some((l) => l.name === n);
    const goldenAlias = lvolAlias(ctx.lvs, goldenName(name));
    const lazyAlias = lvolAlias(ctx.lvs, lazyGoldenName(name));
    const controller = peerControllerName(name);
    const started = Date.now();
    if (!has(goldenName(name))) {
      const src = source.kind === 'peer' ? await this.attach(controller, source.ref, `image ${name}`) : await this.fileSource(name, source.rec);
      const hyd = lvolAlias(ctx.lvs, lazyHydrateName(name));
      if (!has(lazyHydrateName(name))) {
        await ctx.api.bdevLvolCloneBdev({ bdev: src.name, lvs_name: ctx.lvs, clone_name: lazyHydrateName(name) }).catch((e: unknown) => {
          throw toBackendError(e, `image ${name}: hydration clone of ${src.name}`);
        });
      }
      log.info({ event: 'image.hydrate.start' }, 'hydrating the lazy golden');
      await this.inflate(hyd, controller, `image ${name}`);
      await ctx.api.bdevLvolSnapshot({ lvol_name: hyd, snapshot_name: goldenName(name) }).catch((e: unknown) => {
        throw toBackendError(e, `image ${name}: snapshot of the hydrated copy`);
      });
      await ctx.snapshotLocks.run(goldenAlias, () => ctx.deleteLvol(hyd));
      log.info({ event: 'image.hydrate.done', ms: Date.now() - started }, 'image hydrated');
    }
    // The golden exists: repoint what still reads through the peer, then let the peer go.
    const after = await ctx.listLvols();
    if (after.some((l) => l.name === lazyGoldenName(name))) {
      const lazy = await ctx.getBdev(lazyAlias);
      const info = lazy ? lvolInfoOf(lazy) : undefined;
      if (!lazy) throw new BackendError(`image ${name}: the lazy golden has no bdev (degraded: its source is not attached)`, 'transport');
      const clones = info?.clones ?? [];
      if (clones.length === 0) {
        // Under the lock disks clone it with, and only if still nobody's parent.
        await ctx.snapshotLocks.run(lazyAlias, async () => {
          const now = await ctx.getBdev(lazyAlias);
          if (now && (lvolInfoOf(now)?.clones ?? []).length === 0) await ctx.deleteLvol(lazyAlias);
        });
      } else if (this.canReparent) {
        if (info?.base_snapshot !== goldenName(name)) {
          await ctx.snapshotLocks.run(lazyAlias, () => ctx.api.bdevLvolSetParent({ lvol_name: lazyAlias, parent_name: goldenAlias })).catch((e: unknown) => {
            if (e instanceof SpdkError && /File exists/i.test(e.message)) return;
            throw toBackendError(e, `image ${name}: repointing the lazy golden onto the golden`);
          });
        }
      } else if (info?.esnap_clone === true) {
        // v24.01 (no set_parent): the disks made while it hydrated keep the lazy golden; it is
        // inflated in place (a second copy; new disks clone the golden meanwhile, so nothing
        // waits on its lock). Readers of it keep their channel to the source until they stop.
        log.info({ event: 'image.hydrate.lazy_in_place', disks: clones.length }, 'inflating the lazy golden its disks still read');
        await this.inflate(lazyAlias, controller, `image ${name}`);
      }
    }
    if (after.some((l) => l.name === lazyHydrateName(name))) await ctx.deleteLvol(lvolAlias(ctx.lvs, lazyHydrateName(name)));
    if (source.kind === 'file') {
      await this.dropFileSource(name, log);
      return;
    }
    await this.detach(controller, log);
    await this.dropRecord('image', name);
  }

  /** bdev_lvol_inflate; a reconnecting source answers it late (paused), a failed one with EIO. */
  private async inflate(alias: string, controller: string, what: string): Promise<void> {
    const { ctx } = this;
    try {
      await ctx.inflate(alias);
    } catch (e) {
      const state = await this.sourceState(controller);
      const err = toBackendError(e, `${what}: inflating ${alias}`);
      if (state !== undefined && state !== 'enabled') throw new BackendError(`${err.message}; source ${state} (unreachable)`, 'transport', { cause: e });
      throw err;
    }
  }

  /** Lazy objects of an image that deleteImage removes (after its disks are gone). */
  async deleteLazy(name: string): Promise<void> {
    const { ctx } = this;
    if (this.images.has(name) && this.images.get(name)?.state !== 'failed') throw new BackendError(`image ${name}: hydration is running`, 'busy');
    const lazyAlias = lvolAlias(ctx.lvs, lazyGoldenName(name));
    const lazy = await ctx.getBdev(lazyAlias);
    const clones = (lazy ? (lvolInfoOf(lazy)?.clones ?? []) : []).filter((c) => classifyLvol(c).role === 'disk');
    if (clones.length > 0) throw new BackendError(`image ${name}: ${clones.length} disk(s) are clones of its lazy golden (${clones.join(', ')})`, 'busy');
    for (const n of [lazyHydrateName(name), lazyBaseName(name), lazyGoldenName(name)]) await ctx.deleteLvol(lvolAlias(ctx.lvs, n));
    await this.detach(peerControllerName(name), ctx.log.child({ image: name }));
    this.images.delete(name);
    await this.dropRecord('image', name);
    // The file source itself goes with the image's other import leftovers (ImageStore.dropSource).
    await fs.rm(this.localRecordFile(name), { force: true });
  }

  // ---- image exports to peers -------------------------------------------------------------------

  async exportImage(name: string, opts: ImageExportOptions): Promise<RemoteDiskRef> {
    const { ctx } = this;
    checkImageName(name);
    const addr = opts.listenAddress;
    if (addr.kind !== 'tcp') throw new BackendError(`export of image ${name}: spdk exports over NVMe-oF/TCP only, not ${addr.kind}`, 'invalid');
    await this.keeper.ready();
    const alias = lvolAlias(ctx.lvs, goldenName(name));
    const golden = await ctx.getBdev(alias);
    if (!golden) throw new BackendError(`export of image ${name}: no golden ${alias} (only a hydrated image is served)`, 'notFound');
    const nqn = imageExportNqn(name);
    const fail = (what: string) => (e: unknown): never => {
      throw toBackendError(e, `export of image ${name}: ${what}`);
    };
    await ctx.api.nvmfCreateTransport({ trtype: 'TCP' }).catch((e: unknown) => {
      if (!(e instanceof SpdkError && /already exists/i.test(e.message))) fail('nvmf_create_transport TCP')(e);
    });
    let sub = (await ctx.api.nvmfGetSubsystems().catch(fail('nvmf_get_subsystems'))).find((s) => s.nqn === nqn);
    if (!sub) {
      // Never open to any host: only the peers named below may connect.
      await ctx.api
        .nvmfCreateSubsystem({ nqn, allow_any_host: false, serial_number: serialOf(name), model_number: 'kubevirt-spdk image', ...cntlidRange(ctx.cfg.nodeName) })
        .catch(fail(`nvmf_create_subsystem ${nqn}`));
      sub = { nqn, subtype: 'NVMe', listen_addresses: [], hosts: [], namespaces: [] };
    }
    const served = new Set([golden.name, golden.uuid, ...golden.aliases]);
    const other = sub.namespaces.find((n) => !served.has(n.bdev_name));
    if (other) throw new BackendError(`export of image ${name}: subsystem ${nqn} already exports bdev ${other.bdev_name}`, 'busy');
    if (sub.namespaces.length === 0) {
      // The namespace id is the image's own id, not this golden's lvol uuid: a peer's clones
      // name their source by it, so any node holding the image can serve them after a restart.
      const id = imageUuid(name);
      await ctx.api.nvmfSubsystemAddNs({ nqn, namespace: { bdev_name: alias, nguid: nguidOf(id), uuid: id } }).catch(fail(`nvmf_subsystem_add_ns ${alias}`));
    }
    // Hosts before the listener: peers reconnecting when it appears must find themselves admitted.
    const want = new Set(opts.allowedNodes.map(hostNqnOf));
    const have = new Set(sub.hosts.map((h) => h.nqn));
    for (const h of have) if (!want.has(h)) await ctx.api.nvmfSubsystemRemoveHost({ nqn, host: h }).catch(fail(`nvmf_subsystem_remove_host ${h}`));
    for (const h of want) if (!have.has(h)) await ctx.api.nvmfSubsystemAddHost({ nqn, host: h }).catch(fail(`nvmf_subsystem_add_host ${h}`));
    const port = String(addr.port);
    if (!sub.listen_addresses.some((l) => l.traddr === addr.host && String((l as { trsvcid?: unknown }).trsvcid ?? '') === port)) {
      await ctx.api
        .nvmfSubsystemAddListener({ nqn, listen_address: { trtype: 'TCP', adrfam: adrfamOf(addr.host), traddr: addr.host, trsvcid: port } })
        .catch(fail(`nvmf_subsystem_add_listener ${addr.host}:${port}`));
    }
    ctx.log.info({ event: 'image.exported', image: name, nqn, traddr: addr.host, trsvcid: port, peers: opts.allowedNodes.length }, 'image exported to peers');
    return { transport: 'nvmf-tcp', host: addr.host, port: addr.port, adrfam: adrfamOf(addr.host), subnqn: nqn, sizeBytes: bdevSizeBytes(golden) };
  }

  async unexportImage(name: string): Promise<void> {
    const { ctx } = this;
    checkImageName(name);
    const nqn = imageExportNqn(name);
    const subs = await ctx.api.nvmfGetSubsystems().catch((e: unknown) => {
      throw toBackendError(e, 'nvmf_get_subsystems');
    });
    if (!subs.some((s) => s.nqn === nqn)) return;
    await ctx.api.nvmfDeleteSubsystem({ nqn }).catch((e: unknown) => {
      if (!isNotFound(e)) throw toBackendError(e, `nvmf_delete_subsystem ${nqn}`);
    });
    ctx.log.info({ event: 'image.unexported', image: name, nqn }, 'image export deleted');
  }

  /**
   * Per exported image, how many peer nodes read it now: distinct host NQNs holding a
   * controller of its subsystem (a peer's lazy golden and its hydration share one controller;
   * a host that detached or died is gone from the list within seconds, as recorded). What
   * cannot be read is left out: observe never fails for it.
   */
  async peerReaders(): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    const prefix = imageExportNqn('');
    const subs = await this.ctx.api.nvmfGetSubsystems().catch(() => []);
    for (const s of subs) {
      if (!s.nqn.startsWith(prefix)) continue;
      try {
        const raw = await this.ctx.api.client.call('nvmf_subsystem_get_controllers', { nqn: s.nqn });
        out.set(s.nqn.slice(prefix.length), distinctHosts(NvmfControllerListSchema.parse(raw)));
      } catch (e) {
        // Deleted meanwhile (-32602), or a reply we do not understand: no number rather than a wrong one.
        this.ctx.log.debug({ event: 'image.readers_unknown', nqn: s.nqn, err: String(e) }, 'cannot count the readers of an export');
      }
    }
    return out;
  }

  /** Whether the golden of `name` is exported to peers now (deleteImage refuses). */
  async isExported(name: string): Promise<boolean> {
    const subs = await this.ctx.api.nvmfGetSubsystems().catch(() => []);
    return subs.some((s) => s.nqn === imageExportNqn(name));
  }

  // ---- lazy disks (migration) -----------------------------------------------------------------

  async cloneRemoteDisk(ref: RemoteDiskRef, id: string): Promise<ObservedDisk> {
    const { ctx } = this;
    checkDiskId(id);
    if (ref.transport !== 'nvmf-tcp') throw new BackendError(`disk ${id}: spdk reads NVMe-oF/TCP exports only, not ${ref.transport}`, 'invalid');
    await this.keeper.ready();
    const alias = lvolAlias(ctx.lvs, id);
    const existing = (await ctx.listLvols()).find((l) => l.name === id);
    const rec = await this.readRecord('disk', id);
    if (existing && !rec) {
      const b = await ctx.getBdev(alias);
      if (b) return { id, ref: alias, sizeBytes: bdevSizeBytes(b), dependents: 0, owned: true };
    }
    await this.writeRecord('disk', id, ref, { hydrate: rec?.hydrate ?? false });
    const src = await this.attach(diskSourceControllerName(id), ref, `disk ${id}`);
    if (!existing) {
      await ctx.api.bdevLvolCloneBdev({ bdev: src.name, lvs_name: ctx.lvs, clone_name: id }).catch((e: unknown) => {
        if (e instanceof SpdkError && e.kind === 'exists') return;
        throw toBackendError(e, `disk ${id}: external-snapshot clone of ${src.name}`);
      });
      ctx.log.info({ event: 'disk.created', disk: id, source: 'remote', nqn: ref.subnqn }, 'lazy clone of a remote disk created');
    }
    const b = await ctx.getBdev(alias);
    if (!b) throw new BackendError(`disk ${id}: lazy clone has no bdev (its source is not attached)`, 'transport');
    return { id, ref: alias, sizeBytes: bdevSizeBytes(b), dependents: lvolInfoOf(b)?.clones?.length ?? 0, owned: true };
  }

  async hydrateDisk(id: string, imageState: (image: string) => Promise<DiskHydration | undefined>): Promise<DiskHydration> {
    const { ctx } = this;
    checkDiskId(id);
    await this.keeper.ready();
    const running = this.disks.get(id);
    const lvols = await ctx.listLvols();
    const disk = lvols.find((l) => l.name === id);
    if (!disk) throw new BackendError(`disk ${id} does not exist`, 'notFound');
    const diskBdev = disk.is_degraded ? undefined : await ctx.getBdev(lvolAlias(ctx.lvs, id));
    const clusters = diskBdev ? Math.ceil(bdevSizeBytes(diskBdev) / ctx.lvstore.clusterBytes) : 0;
    const percent = (): number => diskPercent(lvols, id, clusters);
    if (running) await this.refreshSourceStates();
    if (running) return { id, state: running.state === 'paused' ? 'paused' : 'hydrating', percent: percent(), ...(running.message !== undefined ? { message: running.message } : {}) };
    const rec = await this.readRecord('disk', id);
    if (rec) {
      await this.writeRecord('disk', id, rec.ref, { hydrate: true });
      this.startDiskHydration(id, rec.ref);
      return { id, state: 'hydrating', percent: percent() };
    }
    // A clone of a lazy golden reads through the image's source: report the image's hydration.
    const parent = diskBdev ? lvolInfoOf(diskBdev)?.base_snapshot : undefined;
    const role = parent !== undefined ? classifyLvol(parent) : undefined;
    if (role?.role === 'lazy') {
      const s = await imageState(role.image);
      if (s) return { ...s, id };
    }
    return { id, state: 'standalone', percent: 100 };
  }

  private startDiskHydration(id: string, ref: RemoteDiskRef): void {
    if (this.disks.has(id)) return;
    const h: Hydration = { state: 'hydrating', task: Promise.resolve() };
    h.task = this.retrying(h, `disk ${id}`, () => this.hydrateDiskNow(id, ref)).finally(() => {
      if (this.disks.get(id) === h && h.state !== 'failed') this.disks.delete(id);
    });
    this.disks.set(id, h);
  }

  private async hydrateDiskNow(id: string, ref: RemoteDiskRef): Promise<void> {
    const { ctx } = this;
    const log = ctx.log.child({ disk: id });
    await this.keeper.ready();
    const controller = diskSourceControllerName(id);
    const alias = lvolAlias(ctx.lvs, id);
    const lvols = await ctx.listLvols();
    const has = (n: string): boolean => lvols.some((l) => l.name === n);
    if (!has(id)) {
      // Deleted meanwhile: nothing depends on the source any more.
      await this.detach(controller, log);
      await this.dropRecord('disk', id);
      return;
    }
    const bdev = await ctx.getBdev(alias);
    const readsRemote = !bdev || lvolInfoOf(bdev)?.esnap_clone === true;
    const started = Date.now();
    if (readsRemote) {
      const src = await this.attach(controller, ref, `disk ${id}`);
      const hsnap = lvolAlias(ctx.lvs, diskBaseName(id));
      let repointed = false;
      if (this.canReparent) {
        if (!has(diskBaseName(id))) {
          const hyd = lvolAlias(ctx.lvs, diskHydrateName(id));
          if (!has(diskHydrateName(id))) {
            await ctx.api.bdevLvolCloneBdev({ bdev: src.name, lvs_name: ctx.lvs, clone_name: diskHydrateName(id) }).catch((e: unknown) => {
              throw toBackendError(e, `disk ${id}: hydration clone of ${src.name}`);
            });
          }
          log.info({ event: 'disk.hydrate.start' }, 'hydrating the disk from its source');
          await this.inflate(hyd, controller, `disk ${id}`);
          await ctx.api.bdevLvolSnapshot({ lvol_name: hyd, snapshot_name: diskBaseName(id) }).catch((e: unknown) => {
            throw toBackendError(e, `disk ${id}: snapshot of the hydrated copy`);
          });
        }
        await ctx.deleteLvol(lvolAlias(ctx.lvs, diskHydrateName(id)));
        repointed = await ctx.diskLocks
          .run(id, () => ctx.api.bdevLvolSetParent({ lvol_name: alias, parent_name: hsnap }))
          .then(() => true)
          .catch((e: unknown) => {
            // A disk grown beyond its source cannot take a parent of another size: inflate it instead.
            log.warn({ event: 'disk.hydrate.repoint_failed', err: String(e) }, 'cannot repoint the disk; inflating it in place');
            return false;
          });
        if (!repointed) await ctx.deleteLvolQuietly(hsnap, log);
      }
      if (!repointed) await this.inflate(alias, controller, `disk ${id}`);
      log.info({ event: 'disk.hydrate.done', ms: Date.now() - started }, 'disk hydrated');
    }
    await this.detach(controller, log);
    await this.dropRecord('disk', id);
  }

  /** After deleteDisk: its hydration helpers and source go too. */
  async forgetDisk(id: string): Promise<void> {
    const { ctx } = this;
    const log = ctx.log.child({ disk: id });
    await ctx.deleteLvol(lvolAlias(ctx.lvs, diskHydrateName(id)));
    await ctx.deleteLvol(lvolAlias(ctx.lvs, diskBaseName(id)));
    if (await this.readRecord('disk', id).catch(() => undefined)) {
      await this.detach(diskSourceControllerName(id), log);
      await this.dropRecord('disk', id);
    }
  }

  /** Disk hydration state for observe-like callers (tests). */
  diskState(id: string): Hydration['state'] | undefined {
    return this.disks.get(id)?.state;
  }
}

/** Percent of a lazy image already local: the hydration clone's allocated clusters (v24.09+ lists them). */
export function hydratedPercent(lvols: readonly Lvol[], image: string, sizeBytes: number, clusterBytes: number): number | undefined {
  const hyd = lvols.find((l) => l.name === lazyHydrateName(image)) ?? lvols.find((l) => l.name === lazyGoldenName(image));
  const allocated = (hyd as { num_allocated_clusters?: unknown } | undefined)?.num_allocated_clusters;
  const total = Math.ceil(sizeBytes / clusterBytes);
  if (typeof allocated !== 'number' || total === 0) return hyd ? undefined : 0;
  return Math.min(100, Math.floor((allocated * 100) / total));
}

function diskPercent(lvols: readonly Lvol[], id: string, clusters: number): number {
  if (lvols.some((l) => l.name === diskBaseName(id)) && !lvols.some((l) => l.name === diskHydrateName(id))) return 100;
  const hyd = lvols.find((l) => l.name === diskHydrateName(id)) as { num_allocated_clusters?: unknown } | undefined;
  if (typeof hyd?.num_allocated_clusters !== 'number' || clusters === 0) return 0;
  return Math.min(99, Math.floor((hyd.num_allocated_clusters * 100) / clusters));
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/** NVMe serial numbers are at most 20 ASCII characters. */
function serialOf(name: string): string {
  return name.replace(/[^A-Za-z0-9]/g, '').slice(-20) || 'kubevirt-spdk';
}

/** sha256 of a file's first `bytes` bytes, or all of it (a lazy source is checked before guests read it). */
export async function sha256File(file: string, signal: AbortSignal, bytes?: number): Promise<string> {
  const hash = createHash('sha256');
  if (bytes === 0) return hash.digest('hex');
  const opts = { signal, highWaterMark: 1 << 20, ...(bytes !== undefined ? { end: bytes - 1 } : {}) };
  for await (const chunk of createReadStream(file, opts)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Whether every byte of `file` from `offset` on is zero (the cluster padding of a lazy source). */
async function zeroFrom(file: string, offset: number, signal: AbortSignal): Promise<boolean> {
  for await (const chunk of createReadStream(file, { signal, start: offset, highWaterMark: 1 << 20 })) {
    if ((chunk as Buffer).some((b) => b !== 0)) return false;
  }
  return true;
}
