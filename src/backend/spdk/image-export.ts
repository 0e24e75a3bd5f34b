import { createHash } from 'node:crypto';
import { SpdkError } from '../../spdk/errors.js';
import { adrfamOf, hostNqnOf, imageExportNqn, type RemoteDiskRef } from '../remote.js';
import { BackendError, type ImageExportOptions } from '../types.js';
import type { SpdkContext } from './context.js';
import { toBackendError } from './errors.js';
import type { LvstoreKeeper } from './lvstore.js';
import { stableUuid } from './lvstore.js';
import { checkImageName, goldenName, lvolAlias } from './naming.js';
import { isNotFound } from './remote-sources.js';
import { bdevSizeBytes, distinctHosts } from './schemas.js';

/**
 * A hydrated golden served to peer nodes as an NVMe-oF/TCP subsystem (one per image, named by
 * imageExportNqn), open only to the host NQNs of the nodes named, and how many peers read it.
 */

/** The id exporters give an image's namespace (NGUID and UUID): derived from its name only. */
export const imageUuid = (image: string): string => stableUuid(`image:${image}`);
/** NGUID form (32 hex digits, no dashes) of a UUID. */
export const nguidOf = (uuid: string): string => uuid.replace(/-/g, '').toUpperCase();

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

/** NVMe serial numbers are at most 20 ASCII characters. */
function serialOf(name: string): string {
  return name.replace(/[^A-Za-z0-9]/g, '').slice(-20) || 'kubevirt-spdk';
}

export class ImageExports {
  constructor(
    private readonly ctx: SpdkContext,
    private readonly keeper: LvstoreKeeper,
  ) {}

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
    // One call per exported image, on every observe: concurrent, so the round waits for one poll.
    await Promise.all(
      subs
        .filter((s) => s.nqn.startsWith(prefix))
        .map(async (s) => {
          try {
            out.set(s.nqn.slice(prefix.length), distinctHosts(await this.ctx.api.nvmfSubsystemGetControllers({ nqn: s.nqn })));
          } catch (e) {
            // Deleted meanwhile (-32602), or a reply we do not understand: no number rather than a wrong one.
            this.ctx.log.debug({ event: 'image.readers_unknown', nqn: s.nqn, err: String(e) }, 'cannot count the readers of an export');
          }
        }),
    );
    return out;
  }

  /** Whether the golden of `name` is exported to peers now (deleteImage refuses). */
  async isExported(name: string): Promise<boolean> {
    const subs = await this.ctx.api.nvmfGetSubsystems().catch(() => []);
    return subs.some((s) => s.nqn === imageExportNqn(name));
  }
}
