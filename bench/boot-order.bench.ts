/**
 * Boot-order prefetch on the qsd backend: a cold node serves a lazy golden from a throttled
 * loopback origin, the "VM" starts a fixed delay after its disk is Ready, then reads a
 * scattered boot pattern through the vhost socket one request at a time (as a booting guest
 * does). Measured in one run: the boot reads' time without a profile (every read goes to the
 * origin), with the profile a first node recorded (hydrated first while the VM starts), and on
 * a node that holds the image (the floor), plus the time to disk Ready in each case.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { BootProfile, BootRange } from '../src/contract/boot-profile.js';
import { QsdBackend } from '../src/backend/qsd/index.js';
import type { ImageSpec } from '../src/backend/types.js';
import { startOrigin, type Origin } from '../test/helpers/origin.js';
import { frontEndAsync } from '../test/helpers/vhost-front-end.js';
import { fmt, median, timeIt, type BenchSection } from './harness.js';

const MiB = 1024 * 1024;
const K = 64 * 1024;
const SIZE = 256 * MiB;
const RATE = 4 * MiB;
/** Between disk Ready and the guest's first read (QEMU and firmware starting). */
const VM_START_MS = 2_000;
const RUNS = 2;

/** A boot's reads: scattered over the image, 64..256 KiB each, in a fixed pseudo-random order. */
function bootPattern(): BootRange[] {
  const out: BootRange[] = [];
  let x = 12345;
  for (let i = 0; i < 40; i++) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    const offset = Math.floor((x % (SIZE / K - 8)) + 16) * K;
    out.push({ offset: Math.min(offset, SIZE - 4 * K), length: ((x >> 8) % 4 + 1) * K });
  }
  return out;
}

interface Run {
  readyMs: number;
  bootMs: number;
  servedMiB: number;
  profile?: BootProfile;
}

async function coldNode(dir: string, origin: Origin, spec: ImageSpec, opts: { record?: boolean; profile?: BootProfile; local?: boolean }): Promise<Run> {
  const b = new QsdBackend({
    stateDir: path.join(dir, 's'),
    vhostDir: path.join(dir, 'v'),
    managed: true,
    lazyImages: true,
    ...(opts.record ? { bootOrder: { record: true, capMs: 30_000, quietMs: 1_500, idleMs: 20_000, pollMs: 200 } } : {}),
  });
  await b.start();
  try {
    const served0 = origin.served();
    const s: ImageSpec = { ...spec, ...(opts.profile ? { bootProfile: opts.profile } : {}) };
    if (opts.local) {
      await b.ensureImage(s);
      for (;;) {
        if ((await b.observe()).images.find((i) => i.name === s.name)?.phase === 'ready') break;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const ready = await timeIt(async () => {
      await b.ensureImage(s);
      const disk = await b.ensureDisk({ id: 'd1', source: { kind: 'image', image: s.name } });
      return b.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    });
    await new Promise((r) => setTimeout(r, VM_START_MS));
    // One front end, one request at a time (it waits for each completion), as a booting guest reads.
    const boot = await timeIt(async () => {
      const res = await frontEndAsync(ready.value.socketPath, bootPattern().map((r) => ({ op: 'read' as const, sector: r.offset / 512, len: r.length })));
      if (!res.results.every((r) => r.status === 0)) throw new Error('a boot read failed');
    });
    let profile: BootProfile | undefined;
    if (opts.record) {
      for (let i = 0; i < 400 && !profile; i++) {
        profile = (await b.observe()).images.find((x) => x.name === s.name)?.bootProfile;
        if (!profile) await new Promise((r) => setTimeout(r, 100));
      }
    }
    return { readyMs: ready.ms, bootMs: boot.ms, servedMiB: (origin.served() - served0) / MiB, ...(profile ? { profile } : {}) };
  } finally {
    await b.close();
  }
}

export async function section(): Promise<BenchSection> {
  const image = randomBytes(SIZE);
  const origin = await startOrigin(image, { bytesPerSecond: RATE });
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'bootb-'));
  try {
    const spec: ImageSpec = { name: 'img', source: { http: { url: origin.url, sha256: createHash('sha256').update(image).digest('hex') } }, format: 'raw', sizeBytes: SIZE };
    const recorder = await coldNode(path.join(root, 'rec'), origin, spec, { record: true });
    if (!recorder.profile) throw new Error('the first node recorded no boot profile');
    const profile = recorder.profile;
    const without: Run[] = [];
    const withP: Run[] = [];
    const local: Run[] = [];
    for (let i = 0; i < RUNS; i++) {
      without.push(await coldNode(path.join(root, `n${i}`), origin, spec, {}));
      withP.push(await coldNode(path.join(root, `p${i}`), origin, spec, { profile }));
    }
    // The floor's golden is hydrated from an unthrottled origin first (its boot reads are local either way).
    const fast = await startOrigin(image);
    try {
      local.push(await coldNode(path.join(root, 'local'), fast, { ...spec, source: { http: { url: fast.url, sha256: createHash('sha256').update(image).digest('hex') } } }, { local: true }));
    } finally {
      await fast.stop();
    }
    const base = median(without.map((r) => r.bootMs));
    const row = (name: string, rs: Run[]): string[] => {
      const boot = median(rs.map((r) => r.bootMs));
      return [name, fmt(median(rs.map((r) => r.readyMs)), 1), fmt(boot, 0), fmt(boot / base, 3)];
    };
    const bootBytes = bootPattern().reduce((n, r) => n + r.length, 0);
    const profileBytes = profile.ranges.reduce((n, r) => n + r.length, 0);
    return {
      area: 'qsd boot-order prefetch (copy-on-read, recorded boot profile replayed first)',
      tables: [
        {
          title: `Boot reads on a cold node: ${bootPattern().length} scattered reads (${fmt(bootBytes / MiB, 1)} MiB) of a ${SIZE / MiB} MiB image, origin at ${RATE / MiB} MiB/s per request, VM starting ${VM_START_MS / 1000} s after disk Ready`,
          columns: ['node', 'disk Ready (ms)', 'boot reads (ms)', 'ratio vs no profile'],
          rows: [row('cold, no profile (baseline)', without), row('cold, with the recorded profile', withP), row('image already local (floor)', local)],
          notes: [
            `Median of ${RUNS} cold nodes each; the floor is one node whose golden was hydrated before the disk was made. Boot reads are timed around one vhost-user front-end process (its start, a few hundred ms, is in every row).`,
            `Profile recorded on a first cold node: ${profile.ranges.length} ranges, ${fmt(profileBytes / MiB, 2)} MiB (the boot reads rounded out to 64 KiB clusters); that node's hydration was paused for its record window.`,
            'With the profile, the node reads those ranges from the origin first (through a copy-on-read node), while the VM starts; the boot then reads local blocks. Ready is not delayed: the replay runs beside it.',
          ],
        },
      ],
    };
  } finally {
    await origin.stop();
    await fs.rm(root, { recursive: true, force: true });
  }
}
