import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QsdBackend } from '../../src/backend/qsd/index.js';
import type { ObservedDisk } from '../../src/backend/types.js';

/**
 * The real data path: a minimal vhost-user-blk front end (what QEMU does for a guest) talks
 * to the export's socket, shares its memory, and sends virtio-blk read and write requests.
 * Node cannot pass file descriptors over a unix socket, so the front end is a short Python
 * script (os.memfd_create, os.eventfd, socket.send_fds: Python >= 3.10).
 */
const FRONT_END = String.raw`
import json, mmap, os, socket, struct, sys, time, hashlib
sock_path, requests = sys.argv[1], json.loads(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sock_path)

def send(req, payload=b'', fds=()):
    msg = struct.pack('<III', req, 1, len(payload)) + payload
    if fds: socket.send_fds(s, [msg], list(fds))
    else: s.sendall(msg)

def recv_exact(n):
    buf = b''
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk: raise SystemExit('back end closed the connection')
        buf += chunk
    return buf

def call(req, payload=b''):
    send(req, payload)
    r, flags, size = struct.unpack('<III', recv_exact(12))
    assert r == req, (r, req)
    return recv_exact(size)

GET_FEATURES, SET_FEATURES, SET_OWNER, SET_MEM_TABLE = 1, 2, 3, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE = 8, 9, 10
SET_VRING_KICK, SET_VRING_CALL = 12, 13
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, SET_VRING_ENABLE, GET_CONFIG = 15, 16, 18, 24
F_PROTOCOL, F_VERSION_1, BLK_F_RO, PROTO_F_CONFIG = 1 << 30, 1 << 32, 1 << 5, 1 << 9

features = struct.unpack('<Q', call(GET_FEATURES))[0]
proto = struct.unpack('<Q', call(GET_PROTOCOL_FEATURES))[0]
send(SET_PROTOCOL_FEATURES, struct.pack('<Q', proto & PROTO_F_CONFIG))
send(SET_OWNER)
send(SET_FEATURES, struct.pack('<Q', features & (F_PROTOCOL | F_VERSION_1 | BLK_F_RO)))
cfg = call(GET_CONFIG, struct.pack('<III', 0, 36, 0) + bytes(36))
capacity_sectors = struct.unpack_from('<Q', cfg, 12)[0]
num_queues = struct.unpack_from('<H', cfg, 12 + 34)[0]

MEM = 2 * 1024 * 1024
QVA = 0x100000000  # the front end's "virtual address" of the region; only used for translation
fd = os.memfd_create('guest')
os.ftruncate(fd, MEM)
mem = mmap.mmap(fd, MEM)
send(SET_MEM_TABLE, struct.pack('<II', 1, 0) + struct.pack('<QQQQ', 0, MEM, QVA, 0), [fd])

N, DESC, AVAIL, USED, HDR, STATUS, DATA = 16, 0x0, 0x1000, 0x2000, 0x10000, 0x10100, 0x100000
kick, callfd = os.eventfd(0), os.eventfd(0)
send(SET_VRING_NUM, struct.pack('<II', 0, N))
send(SET_VRING_BASE, struct.pack('<II', 0, 0))
send(SET_VRING_ADDR, struct.pack('<IIQQQQ', 0, 0, QVA + DESC, QVA + USED, QVA + AVAIL, 0))
send(SET_VRING_KICK, struct.pack('<Q', 0), [kick])
send(SET_VRING_CALL, struct.pack('<Q', 0), [callfd])
send(SET_VRING_ENABLE, struct.pack('<II', 0, 1))

avail_idx = 0
def request(kind, sector, length, fill=0):
    global avail_idx
    struct.pack_into('<IIQ', mem, HDR, kind, 0, sector)
    mem[STATUS] = 0xff
    if kind == 1: mem[DATA:DATA + length] = bytes([fill]) * length
    # header (device reads) -> data (device writes it for a read) -> status (device writes)
    struct.pack_into('<QIHH', mem, DESC + 0, HDR, 16, 1, 1)
    struct.pack_into('<QIHH', mem, DESC + 16, DATA, length, 1 | (2 if kind == 0 else 0), 2)
    struct.pack_into('<QIHH', mem, DESC + 32, STATUS, 1, 2, 0)
    struct.pack_into('<H', mem, AVAIL + 4 + 2 * (avail_idx % N), 0)
    avail_idx += 1
    struct.pack_into('<H', mem, AVAIL + 2, avail_idx)
    os.eventfd_write(kick, 1)
    deadline = time.time() + 10
    while struct.unpack_from('<H', mem, USED + 2)[0] != avail_idx:
        if time.time() > deadline: raise SystemExit('no completion within 10 s')
        time.sleep(0.001)
    out = {'status': mem[STATUS]}
    if kind == 0:
        data = bytes(mem[DATA:DATA + length])
        out['bytes'] = sorted(set(data))
        out['sha256'] = hashlib.sha256(data).hexdigest()
    return out

results = []
for r in requests:
    kind = 1 if r['op'] == 'write' else 0
    results.append(request(kind, r['sector'], r['len'], r.get('fill', 0)))
print(json.dumps({'readonly': bool(features & BLK_F_RO), 'capacitySectors': capacity_sectors,
                  'numQueues': num_queues, 'results': results}))
`;

interface FrontEndResult {
  readonly: boolean;
  capacitySectors: number;
  numQueues: number;
  results: Array<{ status: number; bytes?: number[]; sha256?: string }>;
}

type Request = { op: 'read'; sector: number; len: number } | { op: 'write'; sector: number; len: number; fill: number };

function frontEnd(socketPath: string, requests: Request[]): FrontEndResult {
  const out = spawnSync('python3', ['-c', FRONT_END, socketPath, JSON.stringify(requests)], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (out.status !== 0) throw new Error(`vhost-user front end failed: ${out.stderr}${out.stdout}`);
  return JSON.parse(out.stdout) as FrontEndResult;
}

const available = (cmd: string, args: string[]): boolean => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
// Needs the real daemon, qemu-img, and a Python with memfd/eventfd/send_fds for the front end.
const canRun =
  available('qemu-storage-daemon', ['--version']) &&
  available('qemu-img', ['--version']) &&
  available('python3', ['-c', 'import os, socket; os.eventfd; os.memfd_create; socket.send_fds']);

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
