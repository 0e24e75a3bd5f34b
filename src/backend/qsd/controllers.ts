import { controllerName, hostSocketPath } from '../../contract/layout.js';
import fs from 'node:fs/promises';
import path from 'node:path';
import { MAX_SOCKET_PATH_BYTES, socketPathTooLong } from '../../api/limits.js';
import type { Logger } from '../../log.js';
import { BackendError, type ControllerSpec, type ObservedController } from '../types.js';
import { ensureSlotDir } from '../vhost-fs.js';
import { isGone } from './errors.js';
import type { QsdLayout } from './layout.js';
import { controllerNameOf, exportIdFor, nodeNamesFor, parseControllerName } from './naming.js';
import * as nbd from './nbd.js';
import type { QsdSession } from './session.js';

/**
 * The controllers story of the qsd driver: one block node and one vhost-user-blk export per
 * controller, in the daemon (which forgets them on a restart). The controller name is read
 * back from the export id (naming.ts).
 */

export interface QsdControllersDeps {
  session: QsdSession;
  layout: QsdLayout;
  vhostDir: string;
  log: Logger;
  nbdContext(): nbd.NbdContext;
  /**
   * The node a disk's backing must be opened as (a lazy golden is one shared node, so that
   * every disk sees its hydration); undefined to let QEMU open the backing the header names.
   */
  backingNodeFor(diskRef: string): Promise<string | undefined>;
}

export class QsdControllers {
  constructor(private readonly d: QsdControllersDeps) {}

  async list(): Promise<ObservedController[]> {
    const [exports, nodes] = await Promise.all([this.d.session.exports(), this.d.session.blockNodes()]);
    const out: ObservedController[] = [];
    for (const e of exports) {
      const name = controllerNameOf(e.id);
      if (!name || e['shutting-down'] || e.type !== 'vhost-user-blk') continue;
      const node = nodes.find((n) => n['node-name'] === e['node-name']);
      const { slot, disk } = parseControllerName(name);
      out.push({
        name,
        diskRef: node?.file ?? '',
        readonly: node?.ro ?? true,
        socketPath: hostSocketPath(this.d.vhostDir, controllerName(slot, disk)),
        sessions: 0,
      });
    }
    return out;
  }

  async ensureNow(spec: ControllerSpec): Promise<ObservedController> {
    const { session } = this.d;
    const { slot, disk } = parseControllerName(spec.name);
    const what = `controller ${spec.name}`;
    const log = this.d.log.child({ slot, disk, controller: spec.name });
    const socketPath = hostSocketPath(this.d.vhostDir, controllerName(slot, disk));
    if (socketPathTooLong(socketPath)) {
      throw new BackendError(`${what}: socket path ${socketPath} is longer than ${MAX_SOCKET_PATH_BYTES} bytes`, 'invalid');
    }
    if (spec.queues !== undefined && (!Number.isInteger(spec.queues) || spec.queues < 1 || spec.queues > 256)) {
      throw new BackendError(`${what}: queues ${spec.queues} must be an integer from 1 to 256`, 'invalid');
    }
    const nodes = nodeNamesFor(spec.name);

    const current = (await this.list()).find((c) => c.name === spec.name);
    if (current && current.diskRef === spec.diskRef && current.readonly === spec.readonly) return current;
    if (current) {
      log.info({ event: 'controller.replace', was: current }, 'controller differs from spec; recreating');
      await this.deleteNow(spec.name);
    }

    // A node already open on this disk (an NBD export's, or a remote disk's): QEMU's image
    // locks forbid opening the file a second time, and a remote disk has no file at all.
    const openNodes = await session.blockNodes();
    const shared = openNodes.find(
      (n) => n.file === spec.diskRef && n.drv !== 'file' && n['node-name'] !== undefined && n['node-name'] !== nodes.format,
    );
    if (shared?.['node-name'] !== undefined) {
      if (shared.ro && !spec.readonly) throw new BackendError(`${what}: ${spec.diskRef} is open read-only elsewhere`, 'busy');
      return this.addVhostExport(spec, shared['node-name'], socketPath, log);
    }
    // Re-checked here, where the file is opened read-write as root: whatever reached us.
    if (!this.d.layout.servableFile(spec.diskRef)) {
      throw new BackendError(`${what}: ${spec.diskRef} is neither a disk of this backend nor in the bdev directory; refusing to open it`, 'invalid');
    }
    const st = await fs.stat(spec.diskRef).catch(() => undefined);
    if (!st) throw new BackendError(`${what}: disk ${spec.diskRef} does not exist`, 'notFound');
    // Only our own overlays are qcow2; anything else is served as raw bytes, so that a guest
    // writing a qcow2 header into a raw disk can never make us open other files.
    const format = path.dirname(spec.diskRef) === this.d.layout.disksDir && spec.diskRef.endsWith('.qcow2') ? 'qcow2' : 'raw';
    const backingNode = format === 'qcow2' ? await this.d.backingNodeFor(spec.diskRef) : undefined;

    // A node of ours left open by an earlier attempt is reused only when it matches the spec.
    const existingNode = openNodes.find((n) => n['node-name'] === nodes.format);
    const reusable = existingNode !== undefined && existingNode.file === spec.diskRef && existingNode.ro === spec.readonly;
    if (existingNode && !reusable) await session.deleteNode(nodes.format);
    if (!reusable) {
      await session.exec(
        'blockdev-add',
        {
          driver: format,
          'node-name': nodes.format,
          'read-only': spec.readonly,
          file: { driver: 'file', 'node-name': nodes.file, filename: spec.diskRef, 'read-only': spec.readonly },
          ...(backingNode !== undefined ? { backing: backingNode } : {}),
        },
        `${what}: open ${spec.diskRef}`,
      );
    }

    try {
      return await this.addVhostExport(spec, nodes.format, socketPath, log);
    } catch (err) {
      await session.deleteNode(nodes.format).catch(() => undefined);
      throw err;
    }
  }

  private async addVhostExport(spec: ControllerSpec, nodeName: string, socketPath: string, log: Logger): Promise<ObservedController> {
    const what = `controller ${spec.name}`;
    const id = exportIdFor(spec.name);
    await ensureSlotDir(this.d.vhostDir, path.basename(path.dirname(socketPath)));
    await fs.rm(socketPath, { force: true }); // a socket file left by a daemon that died
    await this.d.session.exec(
      'block-export-add',
      {
        type: 'vhost-user-blk',
        id,
        'node-name': nodeName,
        addr: { type: 'unix', path: socketPath },
        writable: !spec.readonly,
        // The guest sees a write-through disk and never flushes: without this, qcow2
        // metadata of acknowledged writes lives only in QSD's memory and a crash of QSD
        // loses them (the e2e restart test caught it).
        writethrough: true,
        ...(spec.queues !== undefined ? { 'num-queues': spec.queues } : {}),
      },
      what,
    );
    log.info({ event: 'controller.created', diskRef: spec.diskRef, readonly: spec.readonly, socketPath }, 'controller created');
    return { name: spec.name, diskRef: spec.diskRef, readonly: spec.readonly, socketPath, sessions: 0 };
  }

  async deleteNow(name: string): Promise<void> {
    const { session } = this.d;
    const { slot, disk } = parseControllerName(name);
    const id = exportIdFor(name);
    const what = `controller ${name}`;
    const exportNode = (await session.exports()).find((e) => e.id === id)?.['node-name'];
    if (exportNode !== undefined) {
      const deleted = session
        .qmp()
        .waitForEvent('BLOCK_EXPORT_DELETED', (e) => e.data?.id === id, 10_000)
        .catch(() => undefined);
      try {
        await session.exec('block-export-del', { id }, what);
      } catch (err) {
        // Someone else finished the deletion between our query and the command.
        if (!isGone(err)) throw err;
      }
      await deleted;
      // The event can be missed across a reconnect; the export list is the truth.
      for (let i = 0; i < 200 && (await session.exports()).some((e) => e.id === id); i++) {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    // The node may be shared with a migration export (which keeps it) or be a remote disk.
    await nbd.releaseNode(this.d.nbdContext(), exportNode ?? nodeNamesFor(name).format);
    await fs.rm(hostSocketPath(this.d.vhostDir, controllerName(slot, disk)), { force: true });
    this.d.log.info({ event: 'controller.deleted', slot, disk, controller: name }, 'controller deleted');
  }
}
