import { execFile, spawnSync } from 'node:child_process';

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

export interface FrontEndResult {
  readonly: boolean;
  capacitySectors: number;
  numQueues: number;
  results: Array<{ status: number; bytes?: number[]; sha256?: string }>;
}

export type Request = { op: 'read'; sector: number; len: number } | { op: 'write'; sector: number; len: number; fill: number };

export function frontEnd(socketPath: string, requests: Request[]): FrontEndResult {
  const out = spawnSync('python3', ['-c', FRONT_END, socketPath, JSON.stringify(requests)], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (out.status !== 0) throw new Error(`vhost-user front end failed: ${out.stderr}${out.stdout}`);
  return JSON.parse(out.stdout) as FrontEndResult;
}

/**
 * The same front end without blocking the event loop: needed when the data comes from a
 * server in this very process (a loopback origin), which must keep answering meanwhile.
 */
export function frontEndAsync(socketPath: string, requests: Request[]): Promise<FrontEndResult> {
  return new Promise((resolve, reject) => {
    execFile('python3', ['-c', FRONT_END, socketPath, JSON.stringify(requests)], { encoding: 'utf8', timeout: 60_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`vhost-user front end failed: ${err.message} ${stderr}${stdout}`));
      else resolve(JSON.parse(stdout) as FrontEndResult);
    });
  });
}
