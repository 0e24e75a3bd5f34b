import { describe, expect, it } from 'vitest';
import { BackendError } from '../../../../src/backend/types.js';
import {
  checkControllerName,
  checkDiskId,
  checkImageName,
  classifyLvol,
  goldenName,
  importingName,
  imageOfSourceBdev,
  parseControllerName,
  sourceBdevName,
} from '../../../../src/backend/spdk/naming.js';
import { buildObservedState, lvolBytes, planCloneSize } from '../../../../src/backend/spdk/observe.js';
import { KeyedMutex, SingleFlight } from '../../../../src/backend/spdk/concurrency.js';
import type { Bdev, Lvol, VhostController } from '../../../../src/spdk/schemas.js';

const MiB = 1024 * 1024;

describe('naming', () => {
  it('round-trips golden, importing and source names', () => {
    expect(classifyLvol(goldenName('fedora-40'))).toEqual({ role: 'golden', image: 'fedora-40' });
    expect(classifyLvol(importingName('fedora-40'))).toEqual({ role: 'importing', image: 'fedora-40' });
    expect(classifyLvol('vm1-rootdisk')).toEqual({ role: 'disk', id: 'vm1-rootdisk' });
    expect(imageOfSourceBdev(sourceBdevName('fedora-40'))).toBe('fedora-40');
    expect(imageOfSourceBdev('Malloc0')).toBeUndefined();
  });

  it('an image literally named "x-importing" cannot be confused with an import of "x"', () => {
    // Its golden lvol would be img-x-importing, which reads as an import of x in progress.
    expect(() => checkImageName('x-importing')).toThrow(/reserved/);
  });

  it('rejects image names that would not fit an lvol name, naming the limit', () => {
    expect(() => checkImageName('a'.repeat(49))).not.toThrow();
    const err = (() => {
      try {
        checkImageName('a'.repeat(50));
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(BackendError);
    expect((err as BackendError).kind).toBe('invalid');
    expect((err as BackendError).message).toMatch(/at most 49 characters/);
  });

  it('rejects disk ids that collide with image lvols or are not lvol names', () => {
    expect(() => checkDiskId('img-foo')).toThrow(/reserved/);
    expect(() => checkDiskId('a/b')).toThrow(/A-Za-z0-9/);
    expect(() => checkDiskId('')).toThrow();
    expect(() => checkDiskId('vmi-1234-root')).not.toThrow();
  });

  it('accepts <slot>/<disk> controller names only', () => {
    expect(parseControllerName('slot-07/rootdisk')).toEqual({ slot: 'slot-07', disk: 'rootdisk' });
    expect(parseControllerName('vm1.disk0')).toBeUndefined();
    expect(parseControllerName('../x')).toBeUndefined();
    expect(parseControllerName('slot-07/../x')).toBeUndefined();
    expect(parseControllerName('a/b/c')).toBeUndefined();
    expect(() => checkControllerName('slot-07/..')).toThrow(BackendError);
  });
});

describe('planCloneSize', () => {
  const cluster = 4 * MiB;
  it('keeps the golden size when the capacity fits in it', () => {
    expect(planCloneSize(8 * MiB, 8 * MiB, 8 * MiB)).toEqual({ ok: true, sizeMiB: 8, resize: false });
    expect(planCloneSize(undefined, 8 * MiB, 8 * MiB)).toEqual({ ok: true, sizeMiB: 8, resize: false });
  });
  it('grows to the capacity rounded up to MiB', () => {
    expect(planCloneSize(20 * MiB + 1, 8 * MiB, 8 * MiB)).toEqual({ ok: true, sizeMiB: 21, resize: true });
  });
  it('refuses a capacity smaller than the image', () => {
    const plan = planCloneSize(4 * MiB, 8 * MiB, 7 * MiB);
    expect(plan.ok).toBe(false);
    if (!plan.ok) expect(plan.reason).toMatch(/smaller than the image/);
  });
  it('accepts the exact image size although the golden is rounded up to a cluster', () => {
    const image = 6 * MiB + 512;
    expect(planCloneSize(image, 8 * MiB, image)).toEqual({ ok: true, sizeMiB: 8, resize: false });
    expect(planCloneSize(image - 512, 8 * MiB, image).ok).toBe(false);
  });
  it('rounds lvol sizes up to clusters', () => {
    expect(lvolBytes(5, cluster)).toBe(8 * MiB);
    expect(lvolBytes(8, cluster)).toBe(8 * MiB);
  });
});

function lvol(name: string, uuid: string, lvs = 'kvs'): Lvol {
  return {
    alias: `${lvs}/${name}`,
    uuid,
    name,
    is_thin_provisioned: true,
    is_snapshot: false,
    is_clone: false,
    is_esnap_clone: false,
    is_degraded: false,
    lvs: { name: lvs, uuid: `${lvs}-uuid` },
  };
}

function lvolBdev(l: Lvol, mib: number, info: Record<string, unknown>): Bdev {
  return {
    name: l.uuid,
    aliases: [l.alias],
    product_name: 'Logical Volume',
    block_size: 4096,
    num_blocks: (mib * MiB) / 4096,
    uuid: l.uuid,
    claimed: false,
    driver_specific: { lvol: info },
  };
}

function ctrl(name: string, bdev: string | null, readonly = false, sessions = 0): VhostController {
  return {
    ctrlr: name,
    cpumask: '0x1',
    socket: `/v/${name}`,
    sessions: Array.from({ length: sessions }, () => ({})),
    backend_specific: { block: { readonly, bdev } },
  };
}

describe('buildObservedState', () => {
  const golden = lvol('img-fedora', 'u-golden');
  const d1 = lvol('vm1-root', 'u-d1');
  const d2 = lvol('vm2-root', 'u-d2');
  const blank = lvol('vm1-data', 'u-blank');
  const leftover = lvol('img-fedora-importing', 'u-left');
  const stale = lvol('img-ubuntu-importing', 'u-stale');
  const foreign = lvol('other', 'u-foreign', 'otherlvs');
  const bdevs: Bdev[] = [
    lvolBdev(golden, 8, { snapshot: true, clones: ['vm1-root', 'vm2-root', 'img-fedora-importing'] }),
    lvolBdev(d1, 20, { clone: true, base_snapshot: 'img-fedora' }),
    lvolBdev(d2, 8, { clone: true, base_snapshot: 'img-fedora' }),
    lvolBdev(blank, 10, {}),
    lvolBdev(leftover, 8, { clone: true, base_snapshot: 'img-fedora' }),
    lvolBdev(stale, 4, { esnap_clone: true }),
    lvolBdev(foreign, 4, {}),
    { name: 'Nvme0n1', aliases: [], product_name: 'NVMe disk', block_size: 512, num_blocks: 2048, uuid: 'u-nvme', claimed: false, driver_specific: {} },
  ];
  const state = buildObservedState({
    lvsName: 'kvs',
    vhostDir: '/v',
    lvols: [golden, d1, d2, blank, leftover, stale, foreign],
    bdevs,
    controllers: [ctrl('slot-01/root', 'u-d1', false, 1), ctrl('slot-02/shared', 'u-nvme', true), ctrl('someone-elses', 'u-d2')],
    imports: new Map([['centos', { phase: 'importing' as const, sizeBytes: 100 }]]),
  });

  it('reports the golden as ready with the disks cloned from it (not the import left-over)', () => {
    const img = state.images.find((i) => i.name === 'fedora');
    expect(img).toEqual({ name: 'fedora', phase: 'ready', sizeBytes: 8 * MiB, ref: 'kvs/img-fedora', cloneCount: 2 });
  });

  it('reports an interrupted import as failed and a running one by its phase', () => {
    expect(state.images.find((i) => i.name === 'ubuntu')?.phase).toBe('failed');
    expect(state.images.find((i) => i.name === 'centos')).toMatchObject({ phase: 'importing', sizeBytes: 100 });
  });

  it('lists disks of our lvstore only, with their image and size', () => {
    expect(state.disks.map((d) => d.id)).toEqual(['vm1-data', 'vm1-root', 'vm2-root']);
    expect(state.disks.find((d) => d.id === 'vm1-root')).toEqual({
      id: 'vm1-root',
      ref: 'kvs/vm1-root',
      sizeBytes: 20 * MiB,
      image: 'fedora',
      dependents: 0,
      owned: true,
    });
    expect(state.disks.find((d) => d.id === 'vm1-data')?.image).toBeUndefined();
  });

  it('maps controller bdev UUIDs back to lvol aliases and ignores foreign controllers', () => {
    expect(state.controllers).toEqual([
      { name: 'slot-01/root', diskRef: 'kvs/vm1-root', readonly: false, socketPath: '/v/slot-01/root', sessions: 1 },
      { name: 'slot-02/shared', diskRef: 'Nvme0n1', readonly: true, socketPath: '/v/slot-02/shared', sessions: 0 },
    ]);
  });
});

describe('concurrency helpers', () => {
  it('SingleFlight shares one in-flight call and forgets it once settled', async () => {
    const sf = new SingleFlight();
    let calls = 0;
    const fn = async (): Promise<number> => {
      calls++;
      await new Promise((r) => setTimeout(r, 5));
      return calls;
    };
    const [a, b] = await Promise.all([sf.run('k', fn), sf.run('k', fn)]);
    expect([a, b, calls]).toEqual([1, 1, 1]);
    expect(await sf.run('k', fn)).toBe(2);
  });

  it('KeyedMutex runs one key in order and survives a failing holder', async () => {
    const m = new KeyedMutex();
    const order: string[] = [];
    const slow = m.run('a', async () => {
      await new Promise((r) => setTimeout(r, 10));
      order.push('a1');
      throw new Error('boom');
    });
    const next = m.run('a', async () => {
      order.push('a2');
    });
    const other = m.run('b', async () => {
      order.push('b1');
    });
    await expect(slow).rejects.toThrow('boom');
    await next;
    await other;
    expect(order).toEqual(['b1', 'a1', 'a2']);
  });
});

describe('SpdkBackend options', () => {
  it('rejects bad options with the field and the rule', async () => {
    const { SpdkBackend } = await import('../../../../src/backend/spdk/index.js');
    const { SpdkRpcClient } = await import('../../../../src/spdk/client.js');
    const client = new SpdkRpcClient({ socketPath: '/nonexistent.sock', reconnect: false });
    const make = (lvstore: unknown) => () =>
      new SpdkBackend({ client, lvstore: lvstore as { baseBdev: { kind: 'existing'; name: string } }, vhostDir: '/v', stateDir: '/s' });
    expect(make({ baseBdev: { kind: 'aio' } })).toThrow(/lvstore\.baseBdev\.filename: Required/);
    expect(make({ name: 'a b', baseBdev: { kind: 'existing', name: 'Nvme0n1' } })).toThrow(/lvstore\.name: must be/);
    expect(make({ baseBdev: { kind: 'existing', name: 'Nvme0n1' } })).not.toThrow();
  });
});
