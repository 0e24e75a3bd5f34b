import { afterEach, describe, expect, it } from 'vitest';
import { Executor, FreshObserver } from '../../../src/agent/executor.js';
import { ImageCache } from '../../../src/agent/image-cache.js';
import { Journal } from '../../../src/agent/journal.js';
import { diskId } from '../../../src/contract/index.js';
import { reconcile, type Action } from '../../../src/agent/reconcile.js';
import { indexDesired } from '../../../src/agent/safety.js';
import type { DesiredState } from '../../../src/agent/desired.js';
import { BackendError } from '../../../src/backend/types.js';
import { SpdkError } from '../../../src/spdk/errors.js';
import { desiredOf, harness, image, testSocket, vmi, type Harness } from './fixtures.js';
import path from 'node:path';

let h: Harness | undefined;
afterEach(async () => {
  await h?.cleanup();
  h = undefined;
});

const A = vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }]);
const idA = diskId('uid-a', 'root');

/** An executor whose notion of "desired now" the test controls. */
async function executorFor(hh: Harness, desiredNow: () => DesiredState): Promise<{ exec: Executor; journal: Journal; plan: (d: DesiredState) => Promise<Action[]> }> {
  const journal = await Journal.open(path.join(hh.dir, 'state'));
  const exec = new Executor({
    backend: hh.backend,
    journal,
    images: new ImageCache(hh.backend, journal),
    observer: new FreshObserver(hh.backend),
    desiredNow: () => indexDesired(desiredNow()),
    retry: { attempts: 4, baseMs: 1, maxMs: 2 },
    concurrency: 16,
  });
  const plan = async (d: DesiredState): Promise<Action[]> =>
    reconcile(d, await hh.backend.observe(), { journal: journal.state, now: Date.now(), failed: new Map(), sockets: new Map() }, { socket: testSocket, orphanGraceMs: 0, cache: {} });
  return { exec, journal, plan };
}

describe('executor re-checks safety right before each call', () => {
  it('does not delete a controller a guest attached to after the plan was made', async () => {
    h = await harness();
    h.agent.setDesired(desiredOf([A], [image('fedora')]));
    await h.agent.converge('setup');
    const gone = desiredOf([], [image('fedora')]);
    const { exec, plan } = await executorFor(h, () => gone);
    const p = await plan(gone);
    expect(p.map((a) => a.kind)).toEqual(['deleteController', 'deleteDisk']);
    h.backend.attachSession('slot-01/root');
    const r = await exec.execute(p);
    expect(r.refusals.map((x) => x.action)).toEqual(['deleteController', 'deleteDisk']);
    expect(h.backend.controllers.has('slot-01/root')).toBe(true);
    expect(h.backend.disks.has(idA)).toBe(true);
  });

  it('does not delete a disk whose VMI came back after the plan was made', async () => {
    h = await harness();
    h.agent.setDesired(desiredOf([A], [image('fedora')]));
    await h.agent.converge('setup');
    const gone = desiredOf([], [image('fedora')]);
    let now = gone;
    const { exec, plan } = await executorFor(h, () => now);
    const p = (await plan(gone)).filter((a) => a.kind === 'deleteDisk');
    await h.backend.deleteController('slot-01/root');
    now = desiredOf([A], [image('fedora')]);
    const r = await exec.execute(p);
    expect(r.refusals[0]?.reason).toMatch(/still exists/);
    expect(h.backend.disks.has(idA)).toBe(true);
  });

  it('does not create a second controller on a bdev that got one after the plan was made', async () => {
    h = await harness();
    h.backend.bdevs.add('nvme0n1');
    const d = desiredOf([vmi('a', 'slot-01', [{ name: 'd', bdev: 'nvme0n1' }])], []);
    const { exec, plan } = await executorFor(h, () => d);
    const p = await plan(d);
    await h.backend.ensureController({ name: 'slot-05/other', diskRef: 'nvme0n1', readonly: false });
    const r = await exec.execute(p);
    expect(r.refusals[0]?.reason).toMatch(/one controller per bdev/);
    expect([...h.backend.controllers.keys()]).toEqual(['slot-05/other']);
  });

  it('does not evict an image that got a clone after the plan was made', async () => {
    h = await harness();
    h.agent.setDesired(desiredOf([A], [image('fedora')]));
    await h.agent.converge('setup');
    h.agent.setDesired(desiredOf([], []));
    await h.agent.converge('remove');
    await h.backend.ensureImage(image('fedora'));
    const none = desiredOf([], []);
    const { exec, plan } = await executorFor(h, () => none);
    const p = await plan(none);
    expect(p.map((a) => a.kind)).toEqual(['evictImage']);
    await h.backend.ensureDisk({ id: 'd-000000000000-x', source: { kind: 'image', image: 'fedora' }, capacityBytes: 2 ** 31 });
    const r = await exec.execute(p);
    expect(r.refusals[0]?.reason).toMatch(/clone/);
    expect(h.backend.images.has('fedora')).toBe(true);
  });
});

describe('executor errors', () => {
  it('retries busy and transport errors, then succeeds', async () => {
    h = await harness();
    h.backend.fail('ensureDisk', () => new SpdkError('bdev_lvol_clone', -16, 'Device or resource busy', 'busy'), { times: 2 });
    h.backend.fail('ensureController', () => new BackendError('socket closed', 'transport'), { times: 1 });
    h.agent.setDesired(desiredOf([A], [image('fedora')]));
    const r = await h.agent.converge('test');
    expect(r.vmis[0]?.disks[0]?.phase).toBe('Ready');
    expect(h.backend.calls.filter((c) => c.startsWith('ensureDisk'))).toHaveLength(3);
  });

  it('noSpace fails that disk with the cause and leaves the other disks alone', async () => {
    h = await harness();
    h.backend.fail('ensureDisk', () => new BackendError('lvstore lvs has 1 GiB free, 2 GiB asked', 'noSpace'), { match: (id) => id === idA });
    h.agent.setDesired(desiredOf([A, vmi('b', 'slot-02', [{ name: 'root', image: 'fedora' }])], [image('fedora')]));
    const r = await h.agent.converge('test');
    expect(r.vmis.map((v) => `${v.vmi.name}:${v.disks[0]?.phase}:${v.disks[0]?.message ?? ''}`)).toEqual([
      'a:Failed:noSpace: lvstore lvs has 1 GiB free, 2 GiB asked',
      'b:Ready:',
    ]);
    expect(h.backend.controllers.has('slot-01/root')).toBe(false);
    expect(r.settled).toBe(true);
  });

  it('a transport error that outlasts the retries leaves the disk Pending, not Failed', async () => {
    h = await harness();
    h.backend.fail('ensureController', () => new BackendError('connection refused', 'transport'));
    h.agent.setDesired(desiredOf([A], [image('fedora')]));
    const r = await h.agent.converge('test');
    expect(r.vmis[0]?.disks[0]?.phase).toBe('Pending');
    expect(r.vmis[0]?.disks[0]?.message).toMatch(/will retry: transport: connection refused/);
    h.backend.clearFaults();
    expect((await h.agent.converge('again')).vmis[0]?.disks[0]?.phase).toBe('Ready');
  });

  it('F5: a link planted at a socket path is refused; the file it names keeps its owner and mode', async () => {
    h = await harness({ socket: { uid: 107, gid: 107, mode: 0o666 } });
    const { lstat, rm, symlink, writeFile } = await import('node:fs/promises');
    const victim = path.join(h.backend.vhostDir, '..', 'victim');
    await writeFile(victim, 'secret', { mode: 0o600 });
    const before = await lstat(victim);
    h.backend.hook = async (method, arg, when) => {
      if (method === 'ensureController' && when === 'after') {
        await rm(path.join(h!.backend.vhostDir, arg));
        await symlink(victim, path.join(h!.backend.vhostDir, arg));
      }
    };
    h.agent.setDesired(desiredOf([A], [image('fedora')]));
    const r = await h.agent.converge('test');
    expect(r.vmis[0]?.disks[0]?.phase).toBe('Failed');
    expect(r.vmis[0]?.disks[0]?.message).toMatch(/is not a socket \(a symbolic link\); refusing to change its owner or mode/);
    const after = await lstat(victim);
    expect([after.uid, after.gid, after.mode & 0o777]).toEqual([before.uid, before.gid, 0o600]);
  });

  it('F17: a slot directory that is a link to another slot is refused, nothing is served through it', async () => {
    h = await harness();
    const { mkdir, symlink } = await import('node:fs/promises');
    await mkdir(path.join(h.backend.vhostDir, 'slot-09'), { recursive: true });
    await symlink(path.join(h.backend.vhostDir, 'slot-09'), path.join(h.backend.vhostDir, 'slot-01'));
    h.agent.setDesired(desiredOf([A], [image('fedora')]));
    const r = await h.agent.converge('test');
    expect(r.vmis[0]?.disks[0]?.phase).toBe('Failed');
    expect(r.vmis[0]?.disks[0]?.message).toMatch(/slot-01 is a symbolic link; refusing to serve a socket through it/);
    expect(h.backend.controllers.size).toBe(0);
  });

  it('a failing socket fix takes the new controller down again (nothing half-made)', async () => {
    h = await harness({ socket: { uid: 107, gid: 107, mode: 0o660 } });
    h.backend.hook = async (method, arg, when) => {
      if (method === 'ensureController' && when === 'after') {
        const { rm } = await import('node:fs/promises');
        await rm(path.join(h!.backend.vhostDir, arg));
      }
    };
    h.agent.setDesired(desiredOf([A], [image('fedora')]));
    const r = await h.agent.converge('test');
    expect(r.vmis[0]?.disks[0]?.phase).toBe('Failed');
    expect(r.vmis[0]?.disks[0]?.message).toMatch(/socket .* does not exist: the backend did not create it/);
    expect(h.backend.controllers.size).toBe(0);
  });

  it('a socket path over sun_path\'s 107 bytes fails the disk before anything is created (no lvol left behind)', async () => {
    h = await harness();
    const longDir = path.join(h.dir, 'v'.repeat(100));
    Object.defineProperty(h.backend, 'vhostDir', { value: longDir });
    h.agent.setDesired(desiredOf([A], [image('fedora')]));
    const r = await h.agent.reconcile('test');
    expect(r.vmis[0]?.disks[0]?.phase).toBe('Failed');
    expect(r.vmis[0]?.disks[0]?.message).toMatch(/over the 107 a unix socket allows \(sun_path\)/);
    expect(h.backend.disks.size).toBe(0);
    expect(h.backend.controllers.size).toBe(0);
  });
});
