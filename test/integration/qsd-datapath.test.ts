import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QsdBackend } from '../../src/backend/qsd/index.js';
import type { ObservedDisk } from '../../src/backend/types.js';
import { frontEnd } from '../helpers/vhost-front-end.js';
import { qsdCanRun } from '../helpers/qsd-nodes.js';


const canRun = qsdCanRun();

const MiB = 1024 * 1024;
const VIRTIO_BLK_S_OK = 0;
const VIRTIO_BLK_S_IOERR = 1;
const GOLDEN = Buffer.alloc(4 * MiB, 0xaa);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe.skipIf(!canRun)('qsd vhost-user-blk data path', () => {
  let dir: string;
  let backend: QsdBackend;
  let disk: ObservedDisk;
  let golden: string;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qdp-'));
    const src = path.join(dir, 'src.raw');
    await fs.writeFile(src, GOLDEN);
    backend = new QsdBackend({ stateDir: path.join(dir, 's'), vhostDir: path.join(dir, 'v'), managed: true });
    await backend.start();
    golden = (await backend.ensureImage({ name: 'tiny', source: { hostPath: { path: src } }, format: 'raw' })).ref;
    disk = await backend.ensureDisk({ id: 'vm1-root', source: { kind: 'image', image: 'tiny' }, capacityBytes: 8 * MiB });
  });

  afterAll(async () => {
    await backend?.close();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('a guest-side write reaches the overlay; reads fall through to the golden image', async () => {
    const ctrl = await backend.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false, queues: 2 });
    const res = frontEnd(ctrl.socketPath, [
      { op: 'read', sector: 0, len: 4096 },
      { op: 'write', sector: 0, len: 65536, fill: 0x5a },
      { op: 'read', sector: 0, len: 65536 },
      { op: 'read', sector: 128, len: 4096 },
      // Beyond the image, inside the larger capacity: zeros.
      { op: 'read', sector: (6 * MiB) / 512, len: 4096 },
    ]);
    expect(res.readonly).toBe(false);
    expect(res.capacitySectors).toBe((8 * MiB) / 512);
    expect(res.numQueues).toBe(2);
    expect(res.results.map((r) => r.status)).toEqual([0, 0, 0, 0, 0].map(() => VIRTIO_BLK_S_OK));
    expect(res.results[0]?.bytes).toEqual([0xaa]);
    expect(res.results[2]?.bytes).toEqual([0x5a]);
    expect(res.results[3]?.bytes).toEqual([0xaa]);
    expect(res.results[4]?.bytes).toEqual([0]);

    // A new connection (QEMU reconnecting) sees the data; the golden file never changed.
    expect(frontEnd(ctrl.socketPath, [{ op: 'read', sector: 0, len: 512 }]).results[0]?.bytes).toEqual([0x5a]);
    await backend.deleteController('slot-01/root');
    expect(sha(await fs.readFile(golden))).toBe(sha(GOLDEN));
    const check = spawnSync('qemu-io', ['-r', '-f', 'qcow2', '-c', 'read -P 0x5a 0 64k', disk.ref], { encoding: 'utf8' });
    expect(`${check.stdout}${check.stderr}`).toMatch(/read 65536\/65536/);
    expect(`${check.stdout}${check.stderr}`).not.toMatch(/verification failed/i);
  });

  it('a readonly export offers VIRTIO_BLK_F_RO and fails writes, leaving the disk as it was', async () => {
    const ctrl = await backend.ensureController({ name: 'slot-02/root', diskRef: disk.ref, readonly: true });
    const before = frontEnd(ctrl.socketPath, [{ op: 'read', sector: 200, len: 4096 }]).results[0]?.sha256;
    const res = frontEnd(ctrl.socketPath, [
      { op: 'write', sector: 200, len: 4096, fill: 0x11 },
      { op: 'read', sector: 200, len: 4096 },
    ]);
    expect(res.readonly).toBe(true);
    expect(res.results[0]?.status).toBe(VIRTIO_BLK_S_IOERR);
    expect(res.results[1]?.status).toBe(VIRTIO_BLK_S_OK);
    expect(res.results[1]?.sha256).toBe(before);
    await backend.deleteController('slot-02/root');
  });
});
