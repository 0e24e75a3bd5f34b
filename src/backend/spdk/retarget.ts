import type { RemoteDiskRef } from '../remote.js';
import { BackendError } from '../types.js';
import type { SpdkContext } from './context.js';
import type { LazyRecords } from './lazy-records.js';
import { checkImageName, nvmeBdevOf, peerControllerName } from './naming.js';
import type { RemoteSources } from './remote-sources.js';

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
export async function retargetImage(ctx: SpdkContext, records: LazyRecords, sources: RemoteSources, name: string, ref: RemoteDiskRef): Promise<void> {
  checkImageName(name);
  const what = `image ${name}: switching source`;
  const rec = await records.read('image', name);
  if (!rec) throw new BackendError(`image ${name}: no lazy golden over a peer on this node to switch`, 'notFound');
  if (ref.transport !== 'nvmf-tcp' || rec.ref.transport !== 'nvmf-tcp') throw new BackendError(`${what}: spdk reads NVMe-oF/TCP exports only`, 'invalid');
  if (JSON.stringify(rec.ref) === JSON.stringify(ref)) return;
  if (ref.subnqn !== rec.ref.subnqn) throw new BackendError(`${what}: ${ref.subnqn} is another image's export than ${rec.ref.subnqn}`, 'invalid');
  if (ref.sizeBytes > 0 && rec.ref.sizeBytes > 0 && ref.sizeBytes !== rec.ref.sizeBytes) {
    throw new BackendError(`${what}: the new export is ${ref.sizeBytes} bytes, the old one ${rec.ref.sizeBytes}`, 'invalid');
  }
  const controller = peerControllerName(name);
  if (!(await ctx.getBdev(nvmeBdevOf(controller)))) {
    // Not attached (spdk_tgt restarted while the old peer was away): attach the new one; the
    // degraded clones come back when a bdev with the image id exists.
    await records.write('image', name, ref);
    await sources.attach(controller, ref, what);
    ctx.log.info({ event: 'lazy.source.switched', image: name, nqn: ref.subnqn, traddr: ref.host, trsvcid: ref.port }, 'lazy source switched');
    return;
  }
  await sources.addPath(controller, ref, what);
  await records.write('image', name, ref);
  ctx.log.info({ event: 'lazy.source.switched', image: name, nqn: ref.subnqn, traddr: ref.host, trsvcid: ref.port }, 'lazy source switched (a second path)');
}
