/**
 * Migration's export/attach path between two real spdk_tgt processes over NVMe-oF/TCP on
 * loopback: the source exports a node-local lvol, the target attaches it and serves it from a
 * controller at the same `<slot>/<disk>` name; every call is idempotent; cleanup leaves nothing.
 * Opt-in: SPDK_TGT.
 */
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { exportNqn } from '../../src/backend/remote.js';
import { BackendError } from '../../src/backend/types.js';
import { backendOnRealTarget, cases, freePort, realSpdkOrSkip, type BackendNode } from './target.js';

const targets = realSpdkOrSkip('test/spdk/migration.test.ts');
const MiB = 2 ** 20;

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});


async function node(bin: string, name: string): Promise<BackendNode> {
  return backendOnRealTarget(bin, { prefix: `km${name}-`, sizeMiB: 512 }, cleanups);
}

describe.skipIf(targets.length === 0).each(cases(targets))('migration export/attach between two real spdk_tgt ($label)', ({ bin }) => {
  it('moves a node-local disk to a target controller and back out, idempotently', async () => {
    const source = await node(bin, 'a');
    const target = await node(bin, 'b');
    const addr = { kind: 'tcp' as const, host: '127.0.0.1', port: await freePort() };
    const disk = await source.backend.ensureDisk({ id: 'vmi1-root', source: { kind: 'blank' }, capacityBytes: 8 * MiB });
    await source.backend.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });

    const ref = await source.backend.exportDisk('vmi1-root', { listenAddress: addr });
    expect(ref).toEqual({ transport: 'nvmf-tcp', host: '127.0.0.1', port: addr.port, adrfam: 'ipv4', subnqn: exportNqn('vmi1-root'), sizeBytes: disk.sizeBytes });
    // Twice: the transport exists already (real SPDK answers -32603 to a second create) and so does the subsystem.
    expect(await source.backend.exportDisk('vmi1-root', { listenAddress: addr })).toEqual(ref);

    const remote = await target.backend.attachRemoteDisk(ref, 'vmi1-root');
    expect(remote).toMatchObject({ id: 'vmi1-root', ref: 'mig-vmi1-rootn1', sizeBytes: disk.sizeBytes, owned: false });
    expect(await target.backend.attachRemoteDisk(ref, 'vmi1-root')).toEqual(remote);
    const ctrl = await target.backend.ensureController({ name: 'slot-07/root', diskRef: remote.ref, readonly: false });
    expect(ctrl.socketPath).toBe(path.join(target.tgt.vhostDir, 'slot-07', 'root'));

    // A controller still serves the remote disk: detaching it now would pull the disk away.
    await expect(target.backend.detachRemoteDisk('vmi1-root')).rejects.toMatchObject({ kind: 'busy' });

    await source.backend.deleteController('slot-01/root');
    await target.backend.deleteController('slot-07/root');
    await target.backend.detachRemoteDisk('vmi1-root');
    await target.backend.detachRemoteDisk('vmi1-root');
    await source.backend.unexportDisk('vmi1-root');
    await source.backend.unexportDisk('vmi1-root');
    const subs = (await source.client.call('nvmf_get_subsystems')) as Array<{ nqn: string }>;
    expect(subs.map((s) => s.nqn)).not.toContain(exportNqn('vmi1-root'));
    const bdevs = (await target.client.call('bdev_get_bdevs')) as Array<{ name: string }>;
    expect(bdevs.map((b) => b.name)).not.toContain('mig-vmi1-rootn1');
  });

  it('an export nobody listens for is unreachable (retryable), not a permanent notFound', async () => {
    const target = await node(bin, 'c');
    const ref = { transport: 'nvmf-tcp' as const, host: '127.0.0.1', port: await freePort(), adrfam: 'ipv4' as const, subnqn: exportNqn('nope'), sizeBytes: 0 };
    const err = await target.backend.attachRemoteDisk(ref, 'nope').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendError);
    expect(err).toMatchObject({ kind: 'transport', message: expect.stringMatching(/unreachable|127\.0\.0\.1/) });
  });
});
