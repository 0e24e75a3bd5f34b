/**
 * The spdk driver's migration methods against two simulators sharing an NVMe-oF fabric: the
 * source exports a node-local lvol, the target attaches it and serves it from a controller at
 * the same `<slot>/<disk>` name; every call is idempotent and cleanup leaves nothing behind.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { BackendError } from '../../src/backend/types.js';
import { exportNqn } from '../../src/backend/remote.js';
import { startSimPair, type SimPair } from '../../testing/spdk-sim/pair.js';

let pair: SimPair | undefined;
afterEach(async () => {
  await pair?.close();
  pair = undefined;
});

const addr = { kind: 'tcp' as const, host: '127.0.0.1', port: 4420 };

describe('spdk backend: export, attach, detach, unexport', () => {
  it('moves a node-local disk to a target controller and back out, idempotently', async () => {
    pair = await startSimPair();
    const { source, target } = pair;
    const disk = await source.backend.ensureDisk({ id: 'vmi1-root', source: { kind: 'blank' }, capacityBytes: 8 * 1024 * 1024 });
    await source.backend.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });

    const ref = await source.backend.exportDisk('vmi1-root', { listenAddress: addr });
    expect(ref).toEqual({ transport: 'nvmf-tcp', host: '127.0.0.1', port: 4420, adrfam: 'ipv4', subnqn: exportNqn('vmi1-root'), sizeBytes: disk.sizeBytes });
    expect(await source.backend.exportDisk('vmi1-root', { listenAddress: addr })).toEqual(ref);
    const subs = source.sim.snapshot();
    expect(JSON.stringify(subs)).toContain(exportNqn('vmi1-root'));

    const remote = await target.backend.attachRemoteDisk(ref, 'vmi1-root');
    expect(remote).toMatchObject({ id: 'vmi1-root', ref: 'mig-vmi1-rootn1', sizeBytes: disk.sizeBytes, owned: false });
    expect(await target.backend.attachRemoteDisk(ref, 'vmi1-root')).toEqual(remote);
    const ctrl = await target.backend.ensureController({ name: 'slot-07/root', diskRef: remote.ref, readonly: false });
    expect(ctrl.socketPath.endsWith('slot-07/root')).toBe(true);

    // A controller still serves the remote disk: detaching it now would pull the disk away.
    await expect(target.backend.detachRemoteDisk('vmi1-root')).rejects.toMatchObject({ kind: 'busy' });

    // After success the source gives up its controller but keeps exporting.
    await source.backend.deleteController('slot-01/root');
    expect(await target.backend.attachRemoteDisk(ref, 'vmi1-root')).toEqual(remote);

    // Rollback/cleanup, each twice: gone already is done.
    await target.backend.deleteController('slot-07/root');
    await target.backend.detachRemoteDisk('vmi1-root');
    await target.backend.detachRemoteDisk('vmi1-root');
    await source.backend.unexportDisk('vmi1-root');
    await source.backend.unexportDisk('vmi1-root');
    expect(JSON.stringify(source.sim.snapshot())).not.toContain(exportNqn('vmi1-root'));
    expect(JSON.stringify(target.sim.snapshot())).not.toContain('mig-vmi1-root');
  });

  it('says clearly when an export cannot be reached or does not exist', async () => {
    pair = await startSimPair();
    const ref = { transport: 'nvmf-tcp' as const, host: '127.0.0.1', port: 4999, adrfam: 'ipv4' as const, subnqn: exportNqn('nope'), sizeBytes: 0 };
    const err = await pair.target.backend.attachRemoteDisk(ref, 'nope').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendError);
    expect(err).toMatchObject({ kind: 'transport' });
    expect((err as Error).message).toMatch(/nope.*127\.0\.0\.1:4999/);
    await expect(pair.source.backend.exportDisk('missing', { listenAddress: addr })).rejects.toMatchObject({ kind: 'notFound' });
    await expect(pair.source.backend.exportDisk('x', { listenAddress: { kind: 'unix', path: '/tmp/x' } })).rejects.toThrow(/NVMe-oF\/TCP only/);
  });
});
