import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { writeFileAtomic } from '../../fsutil.js';
import type { Logger } from '../../log.js';
import { run } from '../image-source.js';
import { RemoteDiskRefSchema, type RemoteDiskRef } from '../remote.js';
import { BackendError, type DiskHydration, type ObservedDisk } from '../types.js';
import type { QsdLayout } from './layout.js';
import { nbdNodeOptions, nbdUri } from './sources.js';
import type { QmpEvent } from './qmp.js';
import type { NbdTls } from './nbd-tls.js';
import { RetryLater } from './retry-later.js';
import type { QsdSession } from './session.js';

/**
 * Disks over another node's export (live migration's target, issue "migration moves the
 * data"): `disks/<id>.qcow2` is a local overlay whose backing is the export, opened read-only
 * over NBD; the controller serves the overlay, so writes stay local from the first moment.
 * hydrateDisk() streams the export into the overlay (`block-stream` without a base: the disk
 * becomes a standalone file) and then closes the NBD node: the disk no longer depends on the
 * other node. `disks/<id>.remote.json` keeps the export's reference so that a daemon restart
 * reopens the chain, and whether hydration was asked for, so that it resumes.
 *
 * A rebase onto a local golden of the same image (no copy) would need the exporter to say
 * which blocks its overlay holds; an NBD export shows the merged disk, so the copy is full.
 */

const hash = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 24);
const remoteNode = (id: string): string => `n${hash(id)}`;
const overlayNode = (id: string): string => `o${hash(id)}`;
const jobIdFor = (id: string): string => `hydrate-d${hash(id)}`;

interface RemoteRecord {
  ref: RemoteDiskRef;
  hydrate: boolean;
}

export interface RemoteDisksDeps {
  session: QsdSession;
  layout: QsdLayout;
  qemuImg: string;
  log: Logger;
  retryDelayMs: number;
  /** Client credentials for the export (nbd-tls.ts); absent: plain NBD. */
  nbdTls?: NbdTls;
}

export class RemoteDisks {
  private readonly retries: RetryLater;

  constructor(private readonly d: RemoteDisksDeps) {
    this.retries = new RetryLater(d.retryDelayMs, async (id) => {
      if (d.session.connected) await d.session.serial(() => this.hydrateNow(id));
    });
    d.session.on('qmp-event', (e: QmpEvent) => this.onEvent(e));
    d.session.on('connected', () => void this.resumeAll());
  }

  close(): void {
    this.retries.close();
  }

  private async record(id: string): Promise<RemoteRecord | undefined> {
    const text = await fs.readFile(this.d.layout.remoteRecordPath(id), 'utf8').catch(() => undefined);
    if (text === undefined) return undefined;
    const o = JSON.parse(text) as { ref?: unknown; hydrate?: unknown };
    return { ref: RemoteDiskRefSchema.parse(o.ref), hydrate: o.hydrate === true };
  }

  private save(id: string, rec: RemoteRecord): Promise<void> {
    return writeFileAtomic(this.d.layout.remoteRecordPath(id), JSON.stringify(rec), { mode: 0o600 });
  }

  /** Inside session.serial. */
  async cloneNow(ref: RemoteDiskRef, id: string): Promise<ObservedDisk> {
    const { layout } = this.d;
    const what = `disk ${id}`;
    if (ref.transport !== 'nbd') throw new BackendError(`${what}: qsd clones NBD exports only, not ${ref.transport}`, 'invalid');
    const overlay = layout.overlayPath(id);
    const existing = await this.record(id);
    const header = await layout.readHeader(overlay).catch(() => undefined);
    if (header && !existing) throw new BackendError(`${what}: exists and is not a clone of a remote disk; refusing to replace it`, 'invalid');
    if (existing && JSON.stringify(existing.ref) !== JSON.stringify(ref)) {
      throw new BackendError(`${what}: already a clone of export ${existing.ref.transport === 'nbd' ? existing.ref.exportName : '?'}`, 'invalid');
    }
    if (!existing) await this.save(id, { ref, hydrate: false });
    const node = await this.openNow(id);
    if (!header) this.d.log.info({ event: 'disk.remote.cloned', disk: id, export: ref.exportName, node }, 'disk cloned from a remote export');
    const h = await layout.readHeader(overlay);
    return { id, ref: overlay, sizeBytes: h?.virtualSize ?? ref.sizeBytes, dependents: 0, owned: true };
  }

  /**
   * The node serving the overlay (a controller's, or ours), opening the chain if needed.
   * Inside session.serial.
   */
  async openNow(id: string): Promise<string> {
    const { session, layout } = this.d;
    const overlay = layout.overlayPath(id);
    const nodes = await session.blockNodes();
    const open = nodes.find((n) => n.file === overlay && n.drv === 'qcow2' && n['node-name']);
    if (open?.['node-name']) return open['node-name'];
    const header = await layout.readHeader(overlay).catch(() => undefined);
    const backing = header?.backingFile !== undefined ? await this.backingNow(id) : undefined;
    if (!header) {
      const rec = await this.record(id);
      if (!rec) throw new BackendError(`disk ${id}: not a clone of a remote disk`, 'notFound');
      const tmp = `${overlay}.part`;
      await fs.rm(tmp, { force: true });
      const uri = nbdUri(rec.ref as Extract<RemoteDiskRef, { transport: 'nbd' }>);
      const size = await this.remoteSize(id);
      const res = await run(this.d.qemuImg, ['create', '-q', '-f', 'qcow2', '-u', '-F', 'raw', '-b', uri, tmp, String(size)]);
      if (res.code !== 0) throw new BackendError(`disk ${id}: qemu-img create failed: ${res.stderr.trim()}`, 'internal');
      await fs.rename(tmp, overlay);
      return this.openNow(id);
    }
    const o = overlayNode(id);
    await session.exec(
      'blockdev-add',
      { driver: 'qcow2', 'node-name': o, file: { driver: 'file', 'node-name': `${o}-f`, filename: overlay }, backing: backing ?? null },
      `disk ${id}: open`,
    );
    return o;
  }

  private async remoteSize(id: string): Promise<number> {
    const n = await this.backingNow(id);
    const info = await this.d.session.exec<Array<{ 'node-name'?: string; image?: { 'virtual-size'?: number } }>>(
      'query-named-block-nodes',
      { flat: true },
      'query-named-block-nodes',
    );
    return info.find((x) => x['node-name'] === n)?.image?.['virtual-size'] ?? 0;
  }

  /** The NBD node a remote clone reads through (opened if needed); undefined if not one. Inside serial. */
  async backingNow(id: string): Promise<string | undefined> {
    const rec = await this.record(id);
    if (!rec) return undefined;
    const n = remoteNode(id);
    if ((await this.d.session.blockNodes()).some((x) => x['node-name'] === n)) return n;
    try {
      const tls = (await this.d.nbdTls?.clientArgs()) ?? {};
      await this.d.session.exec('blockdev-add', nbdNodeOptions(rec.ref, n, tls), `disk ${id}: open remote export`);
    } catch (e) {
      throw new BackendError((e as Error).message, 'transport', { cause: e });
    }
    return n;
  }

  /** Inside session.serial: see StorageBackend.hydrateDisk. */
  async hydrateNow(id: string): Promise<DiskHydration> {
    const { session, layout } = this.d;
    const rec = await this.record(id);
    const overlay = layout.overlayPath(id);
    if (!rec) {
      if (!(await fs.stat(overlay).then(() => true, () => fs.stat(layout.linkPath(id)).then(() => true, () => false)))) {
        throw new BackendError(`disk ${id} does not exist on this node`, 'notFound');
      }
      return { id, state: 'standalone', percent: 100 };
    }
    if (!rec.hydrate) await this.save(id, { ...rec, hydrate: true });
    const header = await layout.readHeader(overlay);
    if (header && header.backingFile === undefined) {
      await this.finishNow(id);
      return { id, state: 'standalone', percent: 100 };
    }
    const job = jobIdFor(id);
    const running = await session.blockJob(job);
    if (running) return { id, state: 'hydrating', percent: running.len > 0 ? Math.floor((100 * running.offset) / running.len) : 0 };
    try {
      const node = await this.openNow(id);
      await session.exec('block-stream', { 'job-id': job, device: node, 'on-error': 'report' }, `disk ${id}: start hydration`);
    } catch (e) {
      this.retryLater(id, (e as Error).message);
      return { id, state: 'paused', percent: 0, message: (e as Error).message };
    }
    this.d.log.info({ event: 'disk.hydrate.start', disk: id }, 'disk hydration started');
    const paused = this.retries.lastError(id);
    return { id, state: 'hydrating', percent: 0, ...(paused ? { message: `resumed after: ${paused}` } : {}) };
  }

  /** The overlay stands alone: close the NBD node, forget the export. Inside serial. */
  private async finishNow(id: string): Promise<void> {
    await this.d.session.deleteNode(remoteNode(id));
    await fs.rm(this.d.layout.remoteRecordPath(id), { force: true });
    this.retries.forget(id);
    this.d.log.info({ event: 'disk.hydrate.done', disk: id }, 'disk hydrated; remote export no longer used');
  }

  private onEvent(e: QmpEvent): void {
    if (e.event !== 'BLOCK_JOB_COMPLETED') return;
    const job = String(e.data?.device ?? '');
    if (!job.startsWith('hydrate-d')) return;
    void this.ids().then((ids) => {
      const id = ids.find((x) => jobIdFor(x) === job);
      if (id === undefined) return;
      if (typeof e.data?.error === 'string') this.retryLater(id, e.data.error);
      else void this.d.session.serial(() => this.hydrateNow(id)).catch((err: unknown) => this.retryLater(id, (err as Error).message));
    });
  }

  private async ids(): Promise<string[]> {
    const files = await fs.readdir(this.d.layout.disksDir).catch(() => [] as string[]);
    return files.filter((f) => f.endsWith('.remote.json')).map((f) => f.slice(0, -'.remote.json'.length));
  }

  private retryLater(id: string, why: string): void {
    this.retries.schedule(id, why);
  }

  private async resumeAll(): Promise<void> {
    for (const id of await this.ids()) {
      const rec = await this.record(id).catch(() => undefined);
      if (rec?.hydrate) await this.d.session.serial(() => this.hydrateNow(id)).catch((e: unknown) => this.retryLater(id, (e as Error).message));
    }
  }

  /** Removes the record with the disk (the overlay itself is the disks story's). Inside serial. */
  async forgetNow(id: string): Promise<void> {
    if (!(await this.record(id))) return;
    const job = jobIdFor(id);
    if (this.d.session.connected) {
      if (await this.d.session.blockJob(job)) await this.d.session.exec('block-job-cancel', { device: job, force: true }, `disk ${id}: cancel hydration`);
      await this.d.session.deleteNode(overlayNode(id)).catch(() => undefined);
      await this.d.session.deleteNode(remoteNode(id)).catch(() => undefined);
    }
    this.retries.forget(id);
    await fs.rm(this.d.layout.remoteRecordPath(id), { force: true });
  }
}
