import type { Logger } from '../../log.js';
import type { SpdkApi } from '../../spdk/api.js';
import { SpdkError } from '../../spdk/errors.js';
import type { Bdev } from '../../spdk/schemas.js';
import { adrfamOf, exportNqn, type ExportOptions, type RemoteDiskRef } from '../remote.js';
import { BackendError, type ObservedDisk } from '../types.js';
import { toBackendError } from './errors.js';
import { checkDiskId, lvolAlias } from './naming.js';
import { bdevSizeBytes } from './schemas.js';

/**
 * Live migration on spdk_tgt: the source exports a disk's lvol over NVMe-oF/TCP (one
 * subsystem per disk, NQN derived from the disk id), the target attaches it with
 * `bdev_nvme_attach_controller` and serves the resulting `<ctrlr>n1` bdev from a vhost
 * controller. Everything is found again by listing, so a restarted agent converges.
 *
 * Order matters on the source: nvmf claims its namespace bdevs (exclusive_write) while vhost
 * opens without a claim, so the vhost controller must already exist when the namespace is
 * added; after a spdk_tgt restart, controllers are recreated before exports.
 */

export interface ExportContext {
  api: SpdkApi;
  lvs: string;
  log: Logger;
}

/** The NVMe bdev controller of a remote disk; its namespace 1 is the bdev `<name>n1`. */
export const remoteControllerName = (localId: string): string => `mig-${localId}`;
export const remoteBdevName = (localId: string): string => `${remoteControllerName(localId)}n1`;

const isNotFound = (e: unknown): boolean => e instanceof SpdkError && e.kind === 'notFound';

async function getBdev(api: SpdkApi, name: string): Promise<Bdev | undefined> {
  try {
    return (await api.bdevGetBdevs({ name }))[0];
  } catch (e) {
    if (isNotFound(e)) return undefined;
    throw toBackendError(e, `looking up bdev ${name}`);
  }
}

/** nvmf_create_transport TCP once per spdk_tgt; "already exists" is success. */
async function ensureTcpTransport(api: SpdkApi): Promise<void> {
  try {
    await api.nvmfCreateTransport({ trtype: 'TCP' });
  } catch (e) {
    // Real v24.01 answers a second create -32603 "Transport type 'TCP' already exists".
    if (e instanceof SpdkError && /already exists/i.test(e.message)) return;
    throw toBackendError(e, 'nvmf_create_transport TCP');
  }
}

export async function exportDisk(ctx: ExportContext, id: string, opts: ExportOptions): Promise<RemoteDiskRef> {
  checkDiskId(id);
  const addr = opts.listenAddress;
  if (addr.kind !== 'tcp') throw new BackendError(`export of disk ${id}: spdk exports over NVMe-oF/TCP only, not ${addr.kind}`, 'invalid');
  const nqn = exportNqn(id);
  const alias = lvolAlias(ctx.lvs, id);
  const bdev = await getBdev(ctx.api, alias);
  if (!bdev) throw new BackendError(`export of disk ${id}: lvol ${alias} does not exist`, 'notFound');
  await ensureTcpTransport(ctx.api);

  const subsystems = await ctx.api.nvmfGetSubsystems().catch((e: unknown) => {
    throw toBackendError(e, 'nvmf_get_subsystems');
  });
  let sub = subsystems.find((s) => s.nqn === nqn);
  if (!sub) {
    await ctx.api
      .nvmfCreateSubsystem({ nqn, allow_any_host: true, serial_number: serialOf(id), model_number: 'kubevirt-spdk migration' })
      .catch((e: unknown) => {
        throw toBackendError(e, `nvmf_create_subsystem ${nqn}`);
      });
    sub = { nqn, subtype: 'NVMe', listen_addresses: [], hosts: [], namespaces: [] };
  }
  const served = new Set([bdev.name, bdev.uuid, ...bdev.aliases]);
  const other = sub.namespaces.find((n) => !served.has(n.bdev_name));
  if (other) throw new BackendError(`export of disk ${id}: subsystem ${nqn} already exports bdev ${other.bdev_name}`, 'busy');
  if (sub.namespaces.length === 0) {
    await ctx.api.nvmfSubsystemAddNs({ nqn, namespace: { bdev_name: alias } }).catch((e: unknown) => {
      throw toBackendError(e, `nvmf_subsystem_add_ns ${nqn} ${alias}`);
    });
  }
  const port = String(addr.port);
  const listening = sub.listen_addresses.some((l) => l.traddr === addr.host && String((l as { trsvcid?: unknown }).trsvcid ?? '') === port);
  if (!listening) {
    await ctx.api
      .nvmfSubsystemAddListener({ nqn, listen_address: { trtype: 'TCP', adrfam: adrfamOf(addr.host), traddr: addr.host, trsvcid: port } })
      .catch((e: unknown) => {
        throw toBackendError(e, `nvmf_subsystem_add_listener ${nqn} ${addr.host}:${port}`);
      });
  }
  ctx.log.info({ event: 'disk.exported', disk: id, nqn, traddr: addr.host, trsvcid: port }, 'disk exported over NVMe-oF/TCP');
  return { transport: 'nvmf-tcp', host: addr.host, port: addr.port, adrfam: adrfamOf(addr.host), subnqn: nqn, sizeBytes: bdevSizeBytes(bdev) };
}

export async function unexportDisk(ctx: ExportContext, id: string): Promise<void> {
  checkDiskId(id);
  const nqn = exportNqn(id);
  const subsystems = await ctx.api.nvmfGetSubsystems().catch((e: unknown) => {
    throw toBackendError(e, 'nvmf_get_subsystems');
  });
  if (!subsystems.some((s) => s.nqn === nqn)) return;
  try {
    await ctx.api.nvmfDeleteSubsystem({ nqn });
  } catch (e) {
    // Someone deleted it between the listing and the call.
    const still = await ctx.api.nvmfGetSubsystems().catch(() => subsystems);
    if (still.some((s) => s.nqn === nqn)) throw toBackendError(e, `nvmf_delete_subsystem ${nqn}`);
  }
  ctx.log.info({ event: 'disk.unexported', disk: id, nqn }, 'disk export deleted');
}

export async function attachRemoteDisk(ctx: ExportContext, ref: RemoteDiskRef, localId: string): Promise<ObservedDisk> {
  checkDiskId(localId);
  if (ref.transport !== 'nvmf-tcp') throw new BackendError(`disk ${localId}: spdk attaches NVMe-oF/TCP exports only, not ${ref.transport}`, 'invalid');
  const name = remoteControllerName(localId);
  let bdev = await getBdev(ctx.api, remoteBdevName(localId));
  if (!bdev) {
    try {
      await ctx.api.bdevNvmeAttachController({
        name,
        trtype: 'TCP',
        adrfam: ref.adrfam === 'ipv6' ? 'IPv6' : 'IPv4',
        traddr: ref.host,
        trsvcid: String(ref.port),
        subnqn: ref.subnqn,
      });
    } catch (e) {
      // -114 (EALREADY): a concurrent attach of the same controller; its bdev is what we want.
      if (!(e instanceof SpdkError && (e.code === -114 || e.kind === 'exists'))) {
        const err = toBackendError(e, `disk ${localId}: attaching ${ref.subnqn} at ${ref.host}:${ref.port}`);
        // An export that cannot be reached is not the target's bug: say so. Real SPDK answers
        // -19 "No such device" when nobody listens at the address: unreachable, not gone for good.
        const unreachable = err.kind === 'internal' || err.kind === 'notFound';
        throw new BackendError(unreachable ? `${err.message} (export unreachable)` : err.message, unreachable ? 'transport' : err.kind, { cause: e });
      }
    }
    bdev = await getBdev(ctx.api, remoteBdevName(localId));
    if (!bdev) {
      throw new BackendError(`disk ${localId}: attached ${ref.subnqn} but it has no namespace 1 (bdev ${remoteBdevName(localId)})`, 'notFound');
    }
    ctx.log.info({ event: 'remote.attached', disk: localId, nqn: ref.subnqn, bdev: bdev.name }, 'remote disk attached');
  }
  const sizeBytes = bdevSizeBytes(bdev);
  if (ref.sizeBytes > 0 && sizeBytes !== ref.sizeBytes) {
    throw new BackendError(`disk ${localId}: remote disk is ${sizeBytes} bytes, the export said ${ref.sizeBytes}`, 'invalid');
  }
  return { id: localId, ref: bdev.name, sizeBytes, dependents: 0, owned: false };
}

export async function detachRemoteDisk(ctx: ExportContext, localId: string, servedBy: (bdev: Bdev) => Promise<string | undefined>): Promise<void> {
  checkDiskId(localId);
  const bdev = await getBdev(ctx.api, remoteBdevName(localId));
  if (bdev) {
    const ctrlr = await servedBy(bdev);
    if (ctrlr) throw new BackendError(`disk ${localId}: remote disk is still served by controller ${ctrlr}`, 'busy');
  }
  try {
    await ctx.api.bdevNvmeDetachController({ name: remoteControllerName(localId) });
    ctx.log.info({ event: 'remote.detached', disk: localId }, 'remote disk detached');
  } catch (e) {
    // ENODEV (notFound): nothing attached under that name.
    if (isNotFound(e)) return;
    throw toBackendError(e, `disk ${localId}: detaching ${remoteControllerName(localId)}`);
  }
}

/** NVMe serial numbers are at most 20 ASCII characters: the id's tail is the unique part. */
function serialOf(id: string): string {
  return id.replace(/[^A-Za-z0-9]/g, '').slice(-20) || 'kubevirt-spdk';
}
