import { describe, expect, it } from 'vitest';
import { RpcError } from '../../../testing/spdk-sim/errors.js';
import { NvmfFabric } from '../../../testing/spdk-sim/fabric.js';
import { METHODS, decodeParams } from '../../../testing/spdk-sim/methods.js';
import { SpdkModel, metadataClusters, parseCpumask, type Json, type ModelEnv } from '../../../testing/spdk-sim/model.js';
import type { LvstoreMeta } from '../../../testing/spdk-sim/state.js';
import { versionProfile, type SpdkVersion } from '../../../testing/spdk-sim/version.js';
import { Pending } from '../../../testing/spdk-sim/registry.js';

const MiB = 1024 * 1024;

function newModel(files: Record<string, number> = {}, disk = new Map<string, LvstoreMeta>(), version: SpdkVersion = '24.01'): { model: SpdkModel; disk: Map<string, LvstoreMeta> } {
  let n = 0;
  const env: ModelEnv = {
    randomUuid: () => `00000000-0000-4000-8000-${(n++).toString(16).padStart(12, '0')}`,
    fileSize: (f) => {
      const size = files[f];
      if (size === undefined) throw new RpcError(-2, 'No such file or directory');
      return size;
    },
    loadLvstore: (f) => structuredClone(disk.get(f)),
    saveLvstore: (f, m) => void disk.set(f, structuredClone(m)),
    removeLvstore: (f) => void disk.delete(f),
    coreMask: 0x3n,
    vhostDir: '/vhost',
    fabric: new NvmfFabric(),
    log: () => undefined,
    profile: versionProfile(version),
  };
  return { model: completing(new SpdkModel(env)), disk };
}

/**
 * The model as a client that waits for each answer sees it: the server completes a metadata
 * operation (unlocking its blobs, registering new lvols' bdevs) on a later poll; here each
 * call completes before the next starts.
 */
function completing(m: SpdkModel): SpdkModel {
  return new Proxy(m, {
    get(target, prop) {
      const v: unknown = Reflect.get(target, prop, target);
      if (typeof v !== 'function' || prop === 'takeLocks' || prop === 'completeOperation') return v;
      return (...args: unknown[]) => {
        try {
          return (v as (...a: unknown[]) => unknown).apply(target, args);
        } finally {
          const taken = target.takeLocks();
          if (taken.length > 0) target.completeOperation(taken);
        }
      };
    },
  });
}

/** The RpcError a call throws, as {code, message}. */
function failure(fn: () => unknown): { code: number; message: string } {
  try {
    fn();
  } catch (e) {
    if (e instanceof RpcError) return { code: e.code, message: e.message };
    throw e;
  }
  throw new Error('expected the call to fail');
}

/** Malloc0 (32 MiB) with lvs0 of 1 MiB clusters: 31 data clusters, as in the recording. */
function withLvs(version: SpdkVersion = '24.01'): SpdkModel {
  const { model } = newModel({}, undefined, version);
  model.mallocCreate({ name: 'Malloc0', num_blocks: 8192, block_size: 4096 });
  model.lvsCreate({ bdev_name: 'Malloc0', lvs_name: 'lvs0', cluster_sz: MiB });
  return model;
}

const lvs0 = (m: SpdkModel) => (m.getLvstores({ lvs_name: 'lvs0' }) as Array<{ free_clusters: number; total_data_clusters: number }>)[0];
const lvol = (m: SpdkModel, alias: string) => m.snapshot(() => 0).lvols.find((l) => l.alias === alias);
const bdev = (m: SpdkModel, name: string) => (m.getBdevs(name) as Array<Record<string, Json>>)[0] ?? {};

describe('lvstore capacity', () => {
  it('reserves metadata clusters: 32 MiB with 1 MiB clusters leaves 31', () => {
    expect(metadataClusters(32, MiB)).toBe(1);
    expect(lvs0(withLvs())).toMatchObject({ total_data_clusters: 31, free_clusters: 31 });
  });

  it('thick lvols consume clusters, thin ones do not, and ENOSPC is -32602', () => {
    const m = withLvs();
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'thin', size_in_mib: 100, thin_provision: true });
    expect(lvs0(m)?.free_clusters).toBe(31);
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'thick', size_in_mib: 20 });
    expect(lvs0(m)?.free_clusters).toBe(11);
    expect(failure(() => m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'big', size_in_mib: 12 }))).toEqual({ code: -32602, message: 'No space left on device' });
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'fits', size_in_mib: 11 });
    expect(lvs0(m)?.free_clusters).toBe(0);
  });

  it('rounds lvol sizes up to whole clusters', () => {
    const m = withLvs();
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'odd', size_in_mib: 3 });
    const { model } = newModel();
    model.mallocCreate({ name: 'M', num_blocks: 65536, block_size: 512 });
    model.lvsCreate({ bdev_name: 'M', lvs_name: 'big' }); // default 4 MiB clusters
    model.lvolCreate({ lvs_name: 'big', lvol_name: 'x', size_in_mib: 5 });
    expect(bdev(model, 'big/x').num_blocks).toBe((8 * MiB) / 512);
  });

  it('refuses an lvstore on a claimed bdev (-1) and a duplicate name (-17)', () => {
    const m = withLvs();
    expect(failure(() => m.lvsCreate({ bdev_name: 'Malloc0', lvs_name: 'other' }))).toEqual({ code: -1, message: 'Operation not permitted' });
    m.mallocCreate({ name: 'M2', num_blocks: 8192, block_size: 4096 });
    expect(failure(() => m.lvsCreate({ bdev_name: 'M2', lvs_name: 'lvs0' }))).toEqual({ code: -17, message: 'File exists' });
    expect(failure(() => m.lvsCreate({ bdev_name: 'nope', lvs_name: 'x' }))).toEqual({ code: -19, message: 'No such device' });
  });
});

describe('snapshots and clones', () => {
  it('a snapshot takes over the clusters; the origin becomes a thin clone', () => {
    // v25.09: v24.01 does not render num_allocated_clusters (real v24.01 answer).
    const m = withLvs('25.09');
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'base', size_in_mib: 10 });
    m.lvolSnapshot({ lvol_name: 'lvs0/base', snapshot_name: 'snap' });
    expect(lvs0(m)?.free_clusters).toBe(21);
    expect(lvol(m, 'lvs0/snap')).toMatchObject({ allocated: 10, thin: false, readOnly: true });
    expect(lvol(m, 'lvs0/base')).toMatchObject({ allocated: 0, thin: true });
    const listed = m.getLvols({ lvs_name: 'lvs0' }) as Array<Record<string, unknown>>;
    expect(listed.map((l) => [l.name, l.is_snapshot, l.is_clone])).toEqual([
      ['base', false, true],
      ['snap', true, false],
    ]);
    const drv = bdev(m, 'lvs0/snap').driver_specific as { lvol: Record<string, unknown> };
    expect(drv.lvol).toMatchObject({ snapshot: true, clone: false, clones: ['base'], num_allocated_clusters: 10 });
    expect((bdev(m, 'lvs0/base').driver_specific as { lvol: Record<string, unknown> }).lvol).toMatchObject({ clone: true, base_snapshot: 'snap' });
  });

  it('clones only read-only lvols (-32602 Invalid argument otherwise)', () => {
    const m = withLvs();
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'rw', size_in_mib: 4, thin_provision: true });
    expect(failure(() => m.lvolClone({ snapshot_name: 'lvs0/rw', clone_name: 'c' }))).toEqual({ code: -32602, message: 'Invalid argument' });
    m.lvolSetReadOnly({ name: 'lvs0/rw' });
    m.lvolClone({ snapshot_name: 'lvs0/rw', clone_name: 'c' });
    expect(lvol(m, 'lvs0/c')).toMatchObject({ thin: true, allocated: 0, parent: { kind: 'snapshot' } });
    expect(failure(() => m.lvolClone({ snapshot_name: 'lvs0/rw', clone_name: 'c' }))).toEqual({ code: -32602, message: 'File exists' });
  });

  it('a snapshot with two clones cannot be deleted; with one it merges into the clone', () => {
    const m = withLvs();
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'base', size_in_mib: 8 });
    m.lvolSnapshot({ lvol_name: 'lvs0/base', snapshot_name: 'snap' });
    m.lvolClone({ snapshot_name: 'lvs0/snap', clone_name: 'vm1' });
    expect(failure(() => m.lvolDelete({ name: 'lvs0/snap' }))).toEqual({ code: -32603, message: 'Operation not permitted' });
    m.lvolDelete({ name: 'lvs0/vm1' });
    m.lvolDelete({ name: 'lvs0/snap' });
    // The one remaining clone keeps the data: it now owns the snapshot's clusters.
    expect(lvol(m, 'lvs0/base')).toMatchObject({ allocated: 8, parent: null });
    expect(lvs0(m)?.free_clusters).toBe(23);
  });

  it('deleting a missing lvol is -19', () => {
    const m = withLvs();
    expect(failure(() => m.lvolDelete({ name: 'lvs0/nope' }))).toEqual({ code: -19, message: 'No such device' });
  });
});

describe('inflate, decouple, resize, read-only', () => {
  it('inflate allocates every cluster, makes the lvol thick and independent', () => {
    const m = withLvs();
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'base', size_in_mib: 4 });
    m.lvolSnapshot({ lvol_name: 'lvs0/base', snapshot_name: 'snap' });
    m.lvolClone({ snapshot_name: 'lvs0/snap', clone_name: 'c' });
    m.lvolResize({ name: 'lvs0/c', size_in_mib: 10 });
    m.lvolInflate({ name: 'lvs0/c' });
    expect(lvol(m, 'lvs0/c')).toMatchObject({ allocated: 10, thin: false, parent: null });
    expect(lvs0(m)?.free_clusters).toBe(31 - 4 - 10);
    // A snapshot can be inflated: real v24.01 answers true; it stays a read-only snapshot.
    expect(m.lvolInflate({ name: 'lvs0/snap' })).toBe(true);
    expect(lvol(m, 'lvs0/snap')).toMatchObject({ readOnly: true, snapshot: true, parent: null });
  });

  it('inflate beyond the free clusters is ENOSPC and changes nothing', () => {
    const m = withLvs();
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'thin', size_in_mib: 40, thin_provision: true });
    expect(failure(() => m.lvolInflate({ name: 'lvs0/thin' }))).toEqual({ code: -32602, message: 'No space left on device' });
    expect(lvol(m, 'lvs0/thin')).toMatchObject({ allocated: 0, thin: true });
  });

  it('decouple copies only what the parent chain holds and skips one level', () => {
    const m = withLvs();
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'base', size_in_mib: 4 });
    m.lvolSnapshot({ lvol_name: 'lvs0/base', snapshot_name: 'snap' });
    m.lvolClone({ snapshot_name: 'lvs0/snap', clone_name: 'c' });
    m.lvolResize({ name: 'lvs0/c', size_in_mib: 10 });
    m.lvolDecoupleParent({ name: 'lvs0/c' });
    expect(lvol(m, 'lvs0/c')).toMatchObject({ allocated: 4, thin: true, parent: null });
    expect(failure(() => m.lvolDecoupleParent({ name: 'lvs0/c' }))).toEqual({ code: -32602, message: 'Invalid argument' });
  });

  it('resize of a thick lvol allocates (ENOSPC when full); read-only lvols cannot be resized', () => {
    const m = withLvs();
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'thick', size_in_mib: 10 });
    m.lvolResize({ name: 'lvs0/thick', size_in_mib: 20 });
    expect(lvs0(m)?.free_clusters).toBe(11);
    expect(failure(() => m.lvolResize({ name: 'lvs0/thick', size_in_mib: 40 }))).toEqual({ code: -32602, message: 'No space left on device' });
    m.lvolResize({ name: 'lvs0/thick', size_in_mib: 5 });
    expect(lvs0(m)?.free_clusters).toBe(26);
    m.lvolSetReadOnly({ name: 'lvs0/thick' });
    expect(failure(() => m.lvolResize({ name: 'lvs0/thick', size_in_mib: 6 }))).toEqual({ code: -32602, message: 'Operation not permitted' });
  });
});

describe('external-snapshot clones', () => {
  it('claim the external bdev read-only, fall back to degraded when it goes, and inflate frees it', () => {
    const { model: m } = newModel({ '/img/a.raw': 8 * MiB });
    m.mallocCreate({ name: 'Malloc0', num_blocks: 8192, block_size: 4096 });
    m.lvsCreate({ bdev_name: 'Malloc0', lvs_name: 'lvs0', cluster_sz: MiB });
    m.aioCreate({ name: 'img', filename: '/img/a.raw', block_size: 512 });
    const uuid = m.lvolCloneBdev({ bdev: 'img', lvs_name: 'lvs0', clone_name: 'e' }) as string;
    expect(bdev(m, 'img')).toMatchObject({ claimed: true, claim_type: 'read_many_write_none' });
    expect(bdev(m, uuid).num_blocks).toBe((8 * MiB) / 4096);
    expect((bdev(m, 'lvs0/e').driver_specific as { lvol: Record<string, unknown> }).lvol).toMatchObject({ esnap_clone: true, clone: false });
    // A writer cannot open the claimed image; a second read-only clone can share it.
    expect(failure(() => m.lvsCreate({ bdev_name: 'img', lvs_name: 'x' }))).toEqual({ code: -1, message: 'Operation not permitted' });
    m.lvolCloneBdev({ bdev: 'img', lvs_name: 'lvs0', clone_name: 'e2' });
    // Deleting the image while clones read it: gone by name, the clones keep reading through
    // the open descriptor, and the delete answers only when they let go (v25.09 recording, a).
    const pending = m.aioDelete({ name: 'img' });
    expect(pending).toBeInstanceOf(Pending);
    expect(failure(() => m.getBdevs('img'))).toEqual({ code: -19, message: 'No such device' });
    expect(lvol(m, 'lvs0/e')?.degraded).toBe(false);
    // The model forgets the image (a restart): the clones load degraded, with no bdev.
    m.unregistering.clear();
    m.lvolResize({ name: 'lvs0/e', size_in_mib: 8 }); // any change re-syncs the lvol bdevs
    expect((m.getLvols(undefined) as Array<{ name: string; is_degraded: boolean }>).map((l) => [l.name, l.is_degraded])).toEqual([
      ['e', true],
      ['e2', true],
    ]);
    expect(failure(() => m.getBdevs('lvs0/e'))).toEqual({ code: -19, message: 'No such device' });
    m.lvolDelete({ name: 'lvs0/e2' }); // degraded lvols are found by lvs/name
    m.aioCreate({ name: 'img', filename: '/img/a.raw', block_size: 512 }); // new UUID: stays degraded
    expect(lvol(m, 'lvs0/e')?.degraded).toBe(true);
  });

  it('inflating an esnap clone releases the external bdev', () => {
    const { model: m } = newModel({ '/img/a.raw': 8 * MiB });
    m.mallocCreate({ name: 'Malloc0', num_blocks: 8192, block_size: 4096 });
    m.lvsCreate({ bdev_name: 'Malloc0', lvs_name: 'lvs0', cluster_sz: MiB });
    // 4 KiB blocks like the lvstore's: v24.01 cannot inflate smaller ones (see below).
    m.aioCreate({ name: 'img', filename: '/img/a.raw', block_size: 4096 });
    m.lvolCloneBdev({ bdev: 'img', lvs_name: 'lvs0', clone_name: 'e' });
    m.lvolInflate({ name: 'lvs0/e' });
    expect(bdev(m, 'img').claimed).toBe(false);
    expect(lvs0(m)?.free_clusters).toBe(31 - 8);
  });

  it('rejects a clone of an lvol in the same lvstore and unknown names', () => {
    const m = withLvs();
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'x', size_in_mib: 1 });
    expect(failure(() => m.lvolCloneBdev({ bdev: 'lvs0/x', lvs_name: 'lvs0', clone_name: 'y' })).code).toBe(-32602);
    expect(failure(() => m.lvolCloneBdev({ bdev: 'nope', lvs_name: 'lvs0', clone_name: 'y' }))).toEqual({ code: -32602, message: 'bdev does not exist' });
    expect(failure(() => m.lvolCloneBdev({ bdev: 'Malloc0', lvs_name: 'nope', clone_name: 'y' }))).toEqual({ code: -32602, message: 'lvs does not exist' });
  });
});

describe('names and aliases', () => {
  it('finds an lvol bdev by lvs/name and by UUID; the bdev name is the UUID', () => {
    const m = withLvs();
    const uuid = m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'disk', size_in_mib: 1, thin_provision: true }) as string;
    expect(bdev(m, 'lvs0/disk')).toMatchObject({ name: uuid, uuid, aliases: ['lvs0/disk'], product_name: 'Logical Volume' });
    expect(bdev(m, uuid).name).toBe(uuid);
    m.lvolRename({ old_name: 'lvs0/disk', new_name: 'disk2' });
    m.lvsRename({ old_name: 'lvs0', new_name: 'pool' });
    expect(bdev(m, 'pool/disk2').name).toBe(uuid);
    expect(failure(() => m.getBdevs('lvs0/disk'))).toEqual({ code: -19, message: 'No such device' });
  });

  it('malloc bdevs list their UUID as an alias and may be named by it', () => {
    const { model: m } = newModel();
    m.mallocCreate({ name: 'M', num_blocks: 16, block_size: 512 });
    const b = bdev(m, 'M');
    expect(b.aliases).toEqual([b.uuid]);
    expect(bdev(m, b.uuid as string).name).toBe('M');
    expect(failure(() => m.mallocCreate({ name: 'M', num_blocks: 16, block_size: 512 }))).toEqual({ code: -17, message: 'File exists' });
  });
});

describe('vhost controller checks', () => {
  it('follows SPDK: missing bdev, claimed bdev, cpumask outside the core mask, duplicates', () => {
    const m = withLvs();
    m.lvolCreate({ lvs_name: 'lvs0', lvol_name: 'd', size_in_mib: 1, thin_provision: true });
    expect(failure(() => m.prepareVhostController({ ctrlr: 'c', dev_name: 'nope' }))).toEqual({ code: -32602, message: 'No such device' });
    expect(failure(() => m.prepareVhostController({ ctrlr: 'c', dev_name: 'Malloc0' }))).toEqual({ code: -32602, message: 'Operation not permitted' });
    expect(failure(() => m.prepareVhostController({ ctrlr: 'c', dev_name: 'lvs0/d', cpumask: '0x4' }))).toEqual({ code: -32602, message: 'Invalid argument' });
    const c = m.prepareVhostController({ ctrlr: 'slot-07/root', dev_name: 'lvs0/d', cpumask: '[1]' });
    expect(c).toMatchObject({ socket: '/vhost/slot-07/root', cpumask: '0x2' });
    m.addVhostController(c);
    expect(failure(() => m.prepareVhostController({ ctrlr: 'slot-07/root', dev_name: 'lvs0/d' }))).toEqual({ code: -32602, message: 'File exists' });
    // Deleting the served lvol succeeds (no claim); the controller loses its bdev.
    m.lvolDelete({ name: 'lvs0/d' });
    const listed = m.getVhostControllers(undefined, () => []) as Array<{ backend_specific: { block: { bdev: unknown } } }>;
    expect(listed[0]?.backend_specific.block.bdev).toBeNull();
  });

  it('parses core masks like spdk_cpuset_parse', () => {
    expect(parseCpumask('0x3')).toBe(3n);
    expect(parseCpumask('f')).toBe(15n);
    expect(parseCpumask('[0,2-3]')).toBe(13n);
    expect(parseCpumask('zz')).toBeUndefined();
  });
});

describe('OCF', () => {
  it('fails with a claimed core yet lists the vbdev as not started, until deleted', () => {
    const { model: m } = newModel({ '/img/a.raw': 64 * MiB });
    m.mallocCreate({ name: 'Malloc0', num_blocks: 8192, block_size: 4096 });
    m.lvsCreate({ bdev_name: 'Malloc0', lvs_name: 'lvs0', cluster_sz: MiB });
    m.aioCreate({ name: 'golden', filename: '/img/a.raw', block_size: 512 });
    m.lvolCloneBdev({ bdev: 'golden', lvs_name: 'lvs0', clone_name: 'e' });
    m.mallocCreate({ name: 'Cache', num_blocks: 4096, block_size: 4096 });
    expect(failure(() => m.ocfCreate({ name: 'oc', mode: 'wt', cache_bdev_name: 'Cache', core_bdev_name: 'golden' }))).toEqual({
      code: -32603,
      message: 'Could not create OCF vbdev: -1',
    });
    expect(m.ocfGet(undefined)).toEqual([{ name: 'oc', started: false, cache: { name: 'Cache', attached: true }, core: { name: 'golden', attached: false } }]);
    m.ocfDelete({ name: 'oc' });
    expect(bdev(m, 'Cache').claimed).toBe(false);
  });

  it('fails to start with a cache below the OCF minimum, and starts with a big enough one', () => {
    const { model: m } = newModel();
    m.mallocCreate({ name: 'Core', num_blocks: 8192, block_size: 4096 });
    m.mallocCreate({ name: 'Small', num_blocks: 4096, block_size: 4096 });
    m.mallocCreate({ name: 'Big', num_blocks: 8192, block_size: 4096 });
    expect(failure(() => m.ocfCreate({ name: 'a', mode: 'wt', cache_bdev_name: 'Small', core_bdev_name: 'Core' })).code).toBe(-32603);
    expect((m.ocfGet({ name: 'a' }) as Array<{ started: boolean }>)[0]?.started).toBe(false);
    m.ocfDelete({ name: 'a' });
    expect(m.ocfCreate({ name: 'b', mode: 'wt', cache_bdev_name: 'Big', core_bdev_name: 'Core' })).toBe('b');
    expect(bdev(m, 'b').num_blocks).toBe(8192);
  });
});

describe('params decoding', () => {
  const decode = (method: string, params: unknown) => {
    const def = METHODS[method];
    if (!def) throw new Error(method);
    return failure(() => decodeParams(method, def, params));
  };
  it('rejects unknown, missing and mistyped fields with spdk_json_decode_object failed', () => {
    const failed = { code: -32603, message: 'spdk_json_decode_object failed' };
    expect(decode('bdev_malloc_create', { num_blocks: 1, block_size: 512, bogus: 1 })).toEqual(failed);
    expect(decode('bdev_malloc_create', { block_size: 512 })).toEqual(failed);
    expect(decode('bdev_lvol_create', { lvol_name: 'x', size_in_mib: '1', lvs_name: 'l' })).toEqual(failed);
    expect(decode('bdev_lvol_delete', undefined)).toEqual(failed);
    expect(decode('bdev_lvol_delete', [])).toEqual(failed);
  });
  it('rejects params on methods that take none', () => {
    expect(decode('spdk_get_version', {})).toEqual({ code: -32602, message: 'spdk_get_version method requires no parameters' });
  });
});
