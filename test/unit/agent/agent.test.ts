import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SlotStatusSchema } from '../../../src/api/status.js';
import { diskId } from '../../../src/contract/index.js';
import { desiredOf, harness, image, testSocket, vmi, type Harness } from './fixtures.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.cleanup();
  h = undefined;
});

describe('NodeAgent against the fake backend', () => {
  it('provisions image, blank and bdev disks, fixes sockets, and writes the slot file', async () => {
    h = await harness();
    h.backend.bdevs.add('nvme0n1');
    h.agent.setDesired(
      desiredOf(
        [vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }, { name: 'data', blank: true }, { name: 'shared', bdev: 'nvme0n1' }])],
        [image('fedora')],
      ),
    );
    const r = await h.agent.converge('test');
    expect(r.converged).toBe(true);
    expect(r.vmis[0]?.disks.map((d) => [d.name, d.phase])).toEqual([
      ['root', 'Ready'],
      ['data', 'Ready'],
      ['shared', 'Ready'],
    ]);
    const sock = path.join(h.backend.vhostDir, 'slot-01', 'root');
    const st = await stat(sock);
    expect([st.uid, st.gid, st.mode & 0o777]).toEqual([testSocket.uid, testSocket.gid, 0o660]);
    const slot = SlotStatusSchema.parse(JSON.parse(await readFile(path.join(h.agent.stateDir, 'slots', 'slot-01.json'), 'utf8')));
    expect(slot.ready).toBe(true);
    expect(h.backend.controllers.get('slot-01/shared')?.diskRef).toBe('nvme0n1');
    expect(h.backend.images.get('fedora')?.cloneCount).toBe(1);
  });

  it('removing the VMI deletes its controllers and disks but not a bdev it only served', async () => {
    h = await harness();
    h.backend.bdevs.add('nvme0n1');
    h.agent.setDesired(desiredOf([vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }, { name: 'shared', bdev: 'nvme0n1' }])], [image('fedora')]));
    await h.agent.converge('test');
    h.agent.setDesired(desiredOf([], [image('fedora')]));
    const r = await h.agent.converge('test');
    expect(r.converged).toBe(true);
    expect(h.backend.controllers.size).toBe(0);
    expect(h.backend.disks.size).toBe(0);
    expect(h.backend.bdevs.has('nvme0n1')).toBe(true);
    expect(h.backend.images.get('fedora')?.cloneCount).toBe(0);
    await expect(stat(path.join(h.agent.stateDir, 'slots', 'slot-01.json'))).rejects.toThrow();
    expect(Object.keys(JSON.parse(await readFile(path.join(h.agent.stateDir, 'journal.json'), 'utf8')).owned)).toEqual([]);
  });

  it('recovers every controller after a backend restart and reports it', async () => {
    h = await harness();
    const vmis = Array.from({ length: 20 }, (_, i) => vmi(`v${i}`, `slot-${String(i).padStart(2, '0')}`, [{ name: 'root', image: 'fedora' }]));
    h.agent.setDesired(desiredOf(vmis, [image('fedora')]));
    await h.agent.converge('test');
    h.agent.start();
    const recovered = new Promise<{ controllers: number; durationMs: number }>((resolve) => h?.agent.once('recovery', resolve));
    const before = [...h.backend.controllers.values()].map((c) => `${c.name}=${c.diskRef}`).sort();
    await h.backend.restart();
    const rec = await recovered;
    await h.agent.stop();
    expect(rec.controllers).toBe(20);
    expect(rec.durationMs).toBeGreaterThanOrEqual(0);
    expect([...h.backend.controllers.values()].map((c) => `${c.name}=${c.diskRef}`).sort()).toEqual(before);
    const st = await stat(path.join(h.backend.vhostDir, 'slot-07', 'root'));
    expect(st.mode & 0o777).toBe(0o660);
    expect(h.agent.lastReport?.vmis.every((v) => v.disks.every((d) => d.phase === 'Ready'))).toBe(true);
  });

  it('a golden that finishes hydrating is published by a round of its own, not at the next resync', async () => {
    h = await harness({ hydrationPollMs: 5 });
    h.agent.setDesired(desiredOf([vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }])], [image('fedora')]));
    await h.agent.converge('test');
    const fedora = h.backend.images.get('fedora');
    if (!fedora) throw new Error('no image');
    h.backend.images.set('fedora', { ...fedora, phase: 'hydrating', hydratedPercent: 40 });
    await h.agent.converge('test');
    expect(h.agent.lastNodeStatus?.images.find((i) => i.name === 'fedora')?.phase).toBe('hydrating');
    h.agent.start(); // resync is off in the harness: only the hydration follow-up can run a round
    h.backend.images.set('fedora', { ...fedora, phase: 'ready' });
    await new Promise<void>((resolve) => {
      const seen = (r: { reason: string }): void => {
        if (r.reason !== 'hydration' || h?.agent.lastNodeStatus?.images.find((i) => i.name === 'fedora')?.phase !== 'ready') return;
        h?.agent.off('reconciled', seen);
        resolve();
      };
      h?.agent.on('reconciled', seen);
    });
    // Nothing hydrates any more: no further follow-up round is scheduled.
    let more = 0;
    h.agent.on('reconciled', (r: { reason: string }) => void (r.reason === 'hydration' && more++));
    await new Promise((r) => setTimeout(r, 100));
    await h.agent.stop();
    expect(more).toBe(0);
  });

  it('disk ids are deterministic from uid and disk name', () => {
    expect(diskId('uid-a', 'root')).toBe(diskId('uid-a', 'root'));
    expect(diskId('uid-a', 'root')).not.toBe(diskId('uid-b', 'root'));
  });
});
