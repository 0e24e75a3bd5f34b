import { createHash } from 'node:crypto';
import type { Logger } from '../../log.js';
import type { ExportOptions, ListenAddress, RemoteDiskRef } from '../remote.js';
import { BackendError, type ObservedDisk } from '../types.js';
import type { NbdTls } from './nbd-tls.js';

/**
 * Live migration on qemu-storage-daemon: the source serves a disk's block node over NBD
 * (`nbd-server-start` once, `block-export-add type=nbd` per disk, writable), the target opens
 * it as a `driver=nbd` node and exports that node over vhost-user-blk like any other disk.
 *
 * Block permissions (QEMU 7.2): every block export takes CONSISTENT_READ (+WRITE when
 * writable) and shares all permissions, so one node can carry a vhost-user-blk export and a
 * writable NBD export at once. What does not work is a second node on the same image file:
 * QEMU's image locks make the second `blockdev-add` fail ("Failed to get "write" lock"). So
 * the NBD export reuses the node a controller already has open, a controller reuses the node
 * an NBD export opened, and a node is closed only when no export uses it any more. A
 * read-only node cannot take a writable export: exporting a disk served read-only is refused.
 */

export const NBD_EXPORT_PREFIX = 'nbd.';

const hash = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 24);

/** Export id (and NBD export name) of a disk: ids allow [A-Za-z0-9._-], as disk ids do. */
export const nbdExportId = (diskId: string): string => `${NBD_EXPORT_PREFIX}${diskId}`;
/** Node names of a disk opened for an export when no controller had it open (<= 31 chars). */
export const exportNodeNames = (diskId: string): { format: string; file: string } => ({ format: `x${hash(diskId)}`, file: `x${hash(diskId)}-f` });
/** Node name of a remote disk attached over NBD. */
export const remoteNodeName = (localId: string): string => `r${hash(localId)}`;

export const isRemoteNodeName = (n: string): boolean => /^r[0-9a-f]{24}$/.test(n);

export interface BlockNode {
  'node-name'?: string | undefined;
  file: string;
  ro: boolean;
  drv: string;
}
export interface BlockExport {
  id: string;
  type: string;
  'node-name': string;
}

/** What nbd.ts needs from the backend: QMP, listings, and where a disk's file is. */
export interface NbdContext {
  exec<T>(command: string, args: Record<string, unknown> | undefined, what: string): Promise<T>;
  blockNodes(): Promise<BlockNode[]>;
  exports(): Promise<BlockExport[]>;
  /** The file a disk id is stored in (overlay or linked file); throws notFound if none. */
  diskFile(id: string): Promise<{ file: string; format: 'qcow2' | 'raw' }>;
  /** The address the daemon's NBD server listens on, when this process started it. */
  nbdServer: ListenAddress | undefined;
  setNbdServer(a: ListenAddress | undefined): void;
  /** The shared node a qcow2 disk's backing must be (a lazy golden, a remote export), if any. */
  backingNodeFor?(file: string): Promise<string | undefined>;
  /** TLS-PSK of the NBD server and of every NBD client node (nbd-tls.ts); none: plain NBD. */
  tls?: NbdTls;
  log: Logger;
}

/** QMP's SocketAddressLegacy (nbd-server-start) and SocketAddress (blockdev-add). */
function legacyAddr(a: ListenAddress): Record<string, unknown> {
  return a.kind === 'tcp' ? { type: 'inet', data: { host: a.host, port: String(a.port) } } : { type: 'unix', data: { path: a.path } };
}
export function flatAddr(a: ListenAddress): Record<string, unknown> {
  return a.kind === 'tcp' ? { type: 'inet', host: a.host, port: String(a.port) } : { type: 'unix', path: a.path };
}
const sameAddr = (a: ListenAddress, b: ListenAddress): boolean =>
  a.kind === 'tcp' && b.kind === 'tcp' ? a.host === b.host && a.port === b.port : a.kind === 'unix' && b.kind === 'unix' && a.path === b.path;

async function ensureNbdServer(ctx: NbdContext, addr: ListenAddress): Promise<void> {
  const current = ctx.nbdServer;
  if (current) {
    if (!sameAddr(current, addr)) {
      throw new BackendError(`NBD server already listens on ${describe(current)}, not ${describe(addr)}`, 'invalid');
    }
    return;
  }
  const tls = await ctx.tls?.serverCreds();
  try {
    await ctx.exec('nbd-server-start', { addr: legacyAddr(addr), ...tls?.args }, `nbd-server-start ${describe(addr)}`);
  } catch (e) {
    // Started by an earlier agent process against the same daemon: same config, same address.
    if (!(e instanceof BackendError && /already running/i.test(e.message))) throw e;
    // QEMU 7.2 cannot be asked whether a running server has TLS; credentials made only now
    // tell that it has not: serving a key holder's exports on it would serve them to anyone.
    if (tls?.created) {
      throw new BackendError(`NBD server already runs in qemu-storage-daemon without TLS credentials; restart the daemon to serve with the NBD PSK`, 'invalid', { cause: e });
    }
  }
  ctx.setNbdServer(addr);
}

export function describe(a: ListenAddress): string {
  return a.kind === 'tcp' ? `${a.host}:${a.port}` : `unix:${a.path}`;
}

export async function exportDisk(ctx: NbdContext, id: string, opts: ExportOptions): Promise<RemoteDiskRef> {
  const what = `export of disk ${id}`;
  const { file, format } = await ctx.diskFile(id);
  const exportId = nbdExportId(id);
  const [nodes, exports] = await Promise.all([ctx.blockNodes(), ctx.exports()]);
  let node = nodes.find((n) => n.file === file && n.drv !== 'file' && n['node-name']);
  if (node?.ro) throw new BackendError(`${what}: its node ${node['node-name']} is open read-only; a migration export must be writable`, 'busy');
  const nodeName = node?.['node-name'] ?? exportNodeNames(id).format;
  if (!node) {
    const names = exportNodeNames(id);
    const backing = format === 'qcow2' ? await ctx.backingNodeFor?.(file) : undefined;
    await ctx.exec(
      'blockdev-add',
      {
        driver: format,
        'node-name': names.format,
        'read-only': false,
        file: { driver: 'file', 'node-name': names.file, filename: file },
        ...(backing !== undefined ? { backing } : {}),
      },
      `${what}: open ${file}`,
    );
    node = (await ctx.blockNodes()).find((n) => n['node-name'] === names.format);
  }
  await ensureNbdServer(ctx, opts.listenAddress);
  const existing = exports.find((e) => e.id === exportId);
  if (existing && existing['node-name'] !== nodeName) {
    throw new BackendError(`${what}: export ${exportId} serves node ${existing['node-name']}, not ${nodeName}`, 'busy');
  }
  if (!existing) {
    await ctx.exec('block-export-add', { type: 'nbd', id: exportId, 'node-name': nodeName, name: exportId, writable: true }, what);
    ctx.log.info({ event: 'disk.exported', disk: id, export: exportId, node: nodeName, address: describe(opts.listenAddress) }, 'disk exported over NBD');
  }
  const sizeBytes = await nodeSize(ctx, nodeName);
  return { transport: 'nbd', address: opts.listenAddress, exportName: exportId, sizeBytes };
}

async function nodeSize(ctx: NbdContext, nodeName: string): Promise<number> {
  const info = await ctx.exec<Array<{ 'node-name'?: string; image?: { 'virtual-size'?: number } }>>(
    'query-named-block-nodes',
    { flat: true },
    'query-named-block-nodes',
  );
  return info.find((n) => n['node-name'] === nodeName)?.image?.['virtual-size'] ?? 0;
}

/** Deletes an export by id and waits until QEMU has really let go of its node. */
export async function deleteExport(ctx: NbdContext, id: string): Promise<string | undefined> {
  const exp = (await ctx.exports()).find((e) => e.id === id);
  if (!exp) return undefined;
  try {
    await ctx.exec('block-export-del', { id }, `block-export-del ${id}`);
  } catch (e) {
    if (!(e instanceof BackendError && e.kind === 'notFound')) throw e;
  }
  for (let i = 0; i < 200 && (await ctx.exports()).some((e) => e.id === id); i++) await new Promise((r) => setTimeout(r, 25));
  return exp['node-name'];
}

/** Closes a node that no export uses any more (remote nodes are closed by detach only). */
export async function releaseNode(ctx: NbdContext, nodeName: string, opts: { remoteToo?: boolean } = {}): Promise<void> {
  if (isRemoteNodeName(nodeName) && !opts.remoteToo) return;
  if ((await ctx.exports()).some((e) => e['node-name'] === nodeName)) return;
  for (let attempt = 0; ; attempt++) {
    try {
      await ctx.exec('blockdev-del', { 'node-name': nodeName }, `close node ${nodeName}`);
      return;
    } catch (e) {
      if (e instanceof BackendError && e.kind === 'notFound') return;
      if (!(e instanceof BackendError && e.kind === 'busy') || attempt >= 50) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export async function unexportDisk(ctx: NbdContext, id: string): Promise<void> {
  const node = await deleteExport(ctx, nbdExportId(id));
  if (node === undefined) return;
  await releaseNode(ctx, node);
  ctx.log.info({ event: 'disk.unexported', disk: id, node }, 'NBD export deleted');
}

export async function attachRemoteDisk(ctx: NbdContext, ref: RemoteDiskRef, localId: string): Promise<ObservedDisk> {
  if (ref.transport !== 'nbd') throw new BackendError(`disk ${localId}: qsd attaches NBD exports only, not ${ref.transport}`, 'invalid');
  const nodeName = remoteNodeName(localId);
  let node = (await ctx.blockNodes()).find((n) => n['node-name'] === nodeName);
  if (!node) {
    try {
      const tls = (await ctx.tls?.clientArgs()) ?? {};
      await ctx.exec(
        'blockdev-add',
        { driver: 'nbd', 'node-name': nodeName, server: flatAddr(ref.address), export: ref.exportName, 'read-only': false, ...tls },
        `disk ${localId}: attach NBD export ${ref.exportName} at ${describe(ref.address)}`,
      );
    } catch (e) {
      // A refused connection is the export's fault, not an invalid request.
      if (e instanceof BackendError && e.kind !== 'busy') throw new BackendError(e.message, 'transport', { cause: e });
      throw e;
    }
    node = (await ctx.blockNodes()).find((n) => n['node-name'] === nodeName);
    if (!node) throw new BackendError(`disk ${localId}: NBD node ${nodeName} not listed after blockdev-add`, 'internal');
    ctx.log.info({ event: 'remote.attached', disk: localId, node: nodeName, export: ref.exportName }, 'remote disk attached');
  }
  const sizeBytes = await nodeSize(ctx, nodeName);
  if (ref.sizeBytes > 0 && sizeBytes !== ref.sizeBytes) {
    throw new BackendError(`disk ${localId}: remote disk is ${sizeBytes} bytes, the export said ${ref.sizeBytes}`, 'invalid');
  }
  // QEMU names an NBD node's file by its URI; controllers find the node again by that.
  return { id: localId, ref: node.file, sizeBytes, dependents: 0, owned: false };
}

export async function detachRemoteDisk(ctx: NbdContext, localId: string): Promise<void> {
  const nodeName = remoteNodeName(localId);
  const user = (await ctx.exports()).find((e) => e['node-name'] === nodeName);
  if (user) throw new BackendError(`disk ${localId}: remote disk is still served by export ${user.id}`, 'busy');
  if (!(await ctx.blockNodes()).some((n) => n['node-name'] === nodeName)) return;
  await releaseNode(ctx, nodeName, { remoteToo: true });
  ctx.log.info({ event: 'remote.detached', disk: localId, node: nodeName }, 'remote disk detached');
}

// ---- goldens served read-only to peer nodes ------------------------------------------------

/**
 * A golden served to peers: `block-export-add type=nbd writable=false` of the golden's node (a
 * lazy golden's one shared node, or a read-only node over a complete raw golden) on the daemon's
 * one NBD server. Read-only: no peer can change a golden. *Who* reads it: with the cluster's
 * PSK (nbd-tls.ts) only a holder of the key, i.e. one of our nodes, for every export of the
 * server alike (QEMU 7.2 has one TLS setting per server and no per-export client filter, so
 * `allowedNodes` is not enforced node by node); without it, any host reaching the server
 * (see docs/lazy-images.md, "Access").
 */
export const IMAGE_EXPORT_PREFIX = 'img.';
export const imageExportId = (image: string): string => `${IMAGE_EXPORT_PREFIX}${image}`;
/** Node name of a complete raw golden opened for its export (<= 31 chars). */
export const imageExportNodeName = (image: string): string => `e${hash(image)}`;

export interface GoldenNode {
  /** An open node to serve (a lazy golden's shared node), or a raw file to open read-only. */
  node?: string;
  file?: string;
}

export async function exportImage(ctx: NbdContext, image: string, golden: GoldenNode, opts: { listenAddress: ListenAddress }): Promise<RemoteDiskRef> {
  const what = `export of image ${image}`;
  const exportId = imageExportId(image);
  let nodeName = golden.node;
  if (nodeName === undefined) {
    if (golden.file === undefined) throw new BackendError(`${what}: no golden on this node`, 'notFound');
    nodeName = imageExportNodeName(image);
    if (!(await ctx.blockNodes()).some((n) => n['node-name'] === nodeName)) {
      await ctx.exec(
        'blockdev-add',
        { driver: 'raw', 'node-name': nodeName, 'read-only': true, file: { driver: 'file', 'node-name': `${nodeName}-f`, filename: golden.file, 'read-only': true } },
        `${what}: open ${golden.file} read-only`,
      );
    }
  }
  await ensureNbdServer(ctx, opts.listenAddress);
  const existing = (await ctx.exports()).find((e) => e.id === exportId);
  if (existing && existing['node-name'] !== nodeName) {
    throw new BackendError(`${what}: export ${exportId} serves node ${existing['node-name']}, not ${nodeName}`, 'busy');
  }
  if (!existing) {
    await ctx.exec('block-export-add', { type: 'nbd', id: exportId, 'node-name': nodeName, name: exportId, writable: false }, what);
    ctx.log.info({ event: 'image.exported', image, export: exportId, node: nodeName, address: describe(opts.listenAddress) }, 'golden exported read-only over NBD');
  }
  return { transport: 'nbd', address: opts.listenAddress, exportName: exportId, sizeBytes: await nodeSize(ctx, nodeName) };
}

export async function unexportImage(ctx: NbdContext, image: string): Promise<void> {
  const node = await deleteExport(ctx, imageExportId(image));
  if (node === undefined) return;
  // A lazy golden's shared node stays (disks use it); only the node opened for the export goes.
  if (node === imageExportNodeName(image)) await releaseNode(ctx, node);
  ctx.log.info({ event: 'image.unexported', image, node }, 'golden no longer exported');
}
