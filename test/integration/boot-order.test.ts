import { createHash, randomBytes } from 'node:crypto';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { subtractRanges, type BootProfile, type BootRange } from '../../src/contract/boot-profile.js';
import { QsdBackend, type QsdBackendOptions } from '../../src/backend/qsd/index.js';
import { goldenNodeName } from '../../src/backend/qsd/lazy.js';
import { hydratingGoldenOptions } from '../../src/backend/qsd/retarget.js';
import type { ImageSpec } from '../../src/backend/types.js';
import { startOrigin, type Origin } from '../helpers/origin.js';
import { frontEndAsync } from '../helpers/vhost-front-end.js';
import { imageOf, qsdCanRun, waitFor } from '../helpers/qsd-nodes.js';

/**
 * Boot-order prefetch on real qemu-storage-daemons: node A boots a lazy golden from a throttled
 * origin and records which blocks its "guest" read; node B, given that profile, has those
 * blocks in its golden before its stream reaches them, fetched from the origin once; both
 * goldens still hydrate fully and verify. A bad profile is refused and changes nothing else.
 */

const haveCurl = spawnSync('sh', ['-c', 'ls /usr/lib/*/qemu/block-curl.so'], { stdio: 'ignore' }).status === 0;
const haveFuse = spawnSync('sh', ['-c', 'test -c /dev/fuse && test "$(id -u)" = 0'], { stdio: 'ignore' }).status === 0;
const canRun = qsdCanRun();

const MiB = 1024 * 1024;
const K = 64 * 1024;
const SIZE = 32 * MiB;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** The scattered set a "guest" reads at boot: none in the first MiB (where the origin probe and the stream start). */
const BOOT: BootRange[] = [
  { offset: 3 * MiB, length: 2 * K },
  { offset: 7 * MiB + 4 * K, length: K },
  { offset: 12 * MiB, length: 4 * K },
  { offset: 19 * MiB + 8 * K, length: 3 * K },
  { offset: 26 * MiB, length: MiB },
  { offset: 31 * MiB, length: K },
];

let dir: string;
const backends: QsdBackend[] = [];
const origins: Origin[] = [];
const daemons: ChildProcess[] = [];

/** Log lines of a backend, parsed. */
function memoryLog(): { logger: pino.Logger; lines: () => Array<Record<string, unknown>> } {
  const out: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      cb();
    },
  });
  return { logger: pino({ level: 'info' }, sink), lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

async function makeBackend(name: string, extra: Partial<QsdBackendOptions> = {}): Promise<QsdBackend> {
  const b = new QsdBackend({
    stateDir: path.join(dir, name, 's'),
    vhostDir: path.join(dir, name, 'v'),
    managed: true,
    restartDelayMs: 50,
    hydrationRetryMs: 100,
    lazyImages: true,
    ...extra,
  });
  backends.push(b);
  await b.start();
  return b;
}



/** How many times the origin sent each byte of `ranges`, at least and at most. */
function coverage(origin: Origin, ranges: readonly BootRange[]): { min: number; max: number } {
  let min = Infinity;
  let max = 0;
  for (const r of ranges) {
    for (let off = r.offset; off < r.offset + r.length; off += 4096) {
      const n = origin.sent().filter(([s, e]) => s <= off && off < e).length;
      min = Math.min(min, n);
      max = Math.max(max, n);
    }
  }
  return { min, max };
}

/** The golden's own clusters now: its node reopened with its own options (a flush), then its file mapped. */
async function goldenAllocation(b: QsdBackend, name: string, file: string): Promise<BootRange[]> {
  const g = goldenNodeName(name);
  const graph = await b.qmpExecute<{ nodes: Array<{ id: number; name: string }>; edges: Array<{ parent: number; child: number; name: string }> }>('x-debug-query-block-graph');
  const gid = graph.nodes.find((n) => n.name === g)?.id;
  const backing = graph.nodes.find((n) => n.id === graph.edges.find((e) => e.parent === gid && e.name === 'backing')?.child)?.name;
  expect(backing).toBeDefined();
  await b.qmpExecute('blockdev-reopen', { options: [hydratingGoldenOptions(g, backing!)] });
  const res = spawnSync('qemu-img', ['map', '-U', '--output=json', `json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: file }, backing: null })}`], { encoding: 'utf8' });
  expect(res.status).toBe(0);
  return (JSON.parse(res.stdout) as Array<{ start: number; length: number; present: boolean }>).filter((e) => e.present).map((e) => ({ offset: e.start, length: e.length }));
}

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bootorder-'));
});

afterEach(async () => {
  for (const b of backends.splice(0)) await b.close();
  for (const o of origins.splice(0)) await o.stop().catch(() => undefined);
  for (const p of daemons.splice(0)) {
    p.kill('SIGKILL');
    if (p.exitCode === null) await new Promise((r) => p.once('exit', r));
  }
  await fs.rm(dir, { recursive: true, force: true });
});

describe.skipIf(!canRun || !haveCurl || !haveFuse)('boot-order prefetch (qsd)', { timeout: 180_000 }, () => {
  it('A records what its first boot read; B hydrates exactly that first, from the origin once; both verify', async () => {
    const image = randomBytes(SIZE);
    const spec: ImageSpec = { name: 'img', source: { http: { url: '', sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE };

    // ---- node A: no profile known, records one.
    const originA = await startOrigin(image, { bytesPerSecond: 4 * MiB });
    origins.push(originA);
    const a = await makeBackend('a', { bootOrder: { record: true, capMs: 20_000, quietMs: 1_500, idleMs: 15_000, pollMs: 200 } });
    const specA = { ...spec, source: { http: { url: originA.url, sha256: sha(image) } } };
    expect((await a.ensureImage(specA)).phase).toBe('hydrating');
    const disk = await a.ensureDisk({ id: 'd1', source: { kind: 'image', image: 'img' }, capacityBytes: SIZE });
    const ctrl = await a.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    // Over the copy-on-read filter the disk's node is still found by its file: the agent's next round changes nothing.
    expect((await a.observe()).controllers).toMatchObject([{ name: 'slot-01/root', diskRef: disk.ref }]);
    expect(await a.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false })).toMatchObject({ diskRef: disk.ref });
    const boot = await frontEndAsync(
      ctrl.socketPath,
      BOOT.map((r) => ({ op: 'read' as const, sector: r.offset / 512, len: Math.ceil(r.length / 512) * 512 })),
    );
    boot.results.forEach((r, i) => expect(r.sha256).toBe(sha(image.subarray(BOOT[i]!.offset, BOOT[i]!.offset + Math.ceil(BOOT[i]!.length / 512) * 512))));
    const profile = await waitFor('A records a profile', async () => (await imageOf(a, 'img'))?.bootProfile);
    // Every block the guest read (whole clusters), and nothing else.
    const clusters = BOOT.map((r) => ({ offset: Math.floor(r.offset / K) * K, length: Math.ceil((r.offset + r.length) / K) * K - Math.floor(r.offset / K) * K }));
    expect(subtractRanges(clusters, profile.ranges)).toEqual([]);
    expect(subtractRanges(profile.ranges, clusters)).toEqual([]);
    expect(profile.sizeBytes).toBe(SIZE);

    // ---- node B: given A's profile, hydrates it first.
    const originB = await startOrigin(image, { bytesPerSecond: 4 * MiB });
    origins.push(originB);
    const b = await makeBackend('b');
    const specB: ImageSpec = { ...spec, source: { http: { url: originB.url, sha256: sha(image) } }, bootProfile: profile };
    expect((await b.ensureImage(specB)).phase).toBe('hydrating');
    const replayed = await waitFor('B replays the profile', async () => {
      const img = await imageOf(b, 'img');
      return img?.bootProfile ? img : undefined;
    });
    expect(replayed.bootProfile).toEqual(profile);
    const goldenB = path.join(dir, 'b', 's', 'images', 'img.qcow2');
    const allocated = await goldenAllocation(b, 'img', goldenB);
    expect(subtractRanges(profile.ranges, allocated)).toEqual([]);
    // The stream had not reached the profile's far end: those blocks came first.
    const last = profile.ranges[profile.ranges.length - 1]!;
    expect(((replayed.hydratedPercent ?? 100) * SIZE) / 100).toBeLessThan(last.offset);
    expect(coverage(originB, profile.ranges)).toEqual({ min: 1, max: 1 });

    // ---- both hydrate fully and verify; the origin served B its image once (+ the 64 KiB probe).
    for (const n of [a, b]) await waitFor('hydration', async () => ((await imageOf(n, 'img'))?.phase === 'ready' ? true : undefined));
    expect(coverage(originB, [{ offset: 0, length: SIZE }]).max).toBeLessThanOrEqual(2);
    expect(originB.served()).toBeLessThanOrEqual(SIZE + K);
    // A's disk was moved off the copy-on-read filter when the golden froze: it still reads the image.
    const all = await frontEndAsync(ctrl.socketPath, Array.from({ length: SIZE / MiB }, (_, i) => ({ op: 'read' as const, sector: (i * MiB) / 512, len: MiB })));
    expect(all.results.map((r) => r.sha256)).toEqual(Array.from({ length: SIZE / MiB }, (_, i) => sha(image.subarray(i * MiB, (i + 1) * MiB))));
    expect((await fs.stat(path.join(dir, 'a', 's', 'images', 'img.qcow2'))).mode & 0o777).toBe(0o400);
  });

  it('a bad profile is refused with the field named; the golden hydrates and verifies as without one', async () => {
    const image = randomBytes(SIZE);
    const origin = await startOrigin(image, { bytesPerSecond: 16 * MiB });
    origins.push(origin);
    const log = memoryLog();
    const c = await makeBackend('c', { logger: log.logger });
    const bad = { sizeBytes: SIZE, ranges: [{ offset: 100, length: K }] } as BootProfile;
    const img = await c.ensureImage({ name: 'img', source: { http: { url: origin.url, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE, bootProfile: bad });
    expect(img.phase).toBe('hydrating');
    const refused = log.lines().find((l) => l.event === 'image.boot.refused');
    expect(refused?.err).toMatch(/^bootProfile\.ranges\[0\]\.offset: must be a multiple of 65536/);
    // A profile recorded on an image of another size is refused too.
    const other = { sizeBytes: 2 * SIZE, ranges: [{ offset: 0, length: K }] };
    const d = await makeBackend('d', { logger: log.logger });
    await d.ensureImage({ name: 'img', source: { http: { url: origin.url, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE, bootProfile: other });
    expect(log.lines().some((l) => l.event === 'image.boot.refused' && String(l.err).startsWith('bootProfile.sizeBytes:'))).toBe(true);
    for (const n of [c, d]) {
      const done = await waitFor('hydration', async () => {
        const i = await imageOf(n, 'img');
        return i?.phase === 'ready' || i?.phase === 'failed' ? i : undefined;
      });
      expect(done.phase).toBe('ready');
      expect(done.bootProfile).toBeUndefined();
    }
  });

  it('an agent restart mid-record (the daemon outlives it) resumes the paused stream; delete mid-record leaves nothing', async () => {
    const image = randomBytes(SIZE);
    const origin = await startOrigin(image, { bytesPerSecond: 16 * MiB });
    origins.push(origin);
    const stateDir = path.join(dir, 'u', 's');
    await fs.mkdir(stateDir, { recursive: true });
    const qmpSocket = path.join(dir, 'u', 'qmp.sock');
    const qsd = spawn('qemu-storage-daemon', ['--chardev', `socket,id=m,path=${qmpSocket},server=on,wait=off`, '--monitor', 'chardev=m'], { stdio: 'ignore' });
    daemons.push(qsd);
    await waitFor('daemon socket', async () => fs.stat(qmpSocket).then(() => true, () => false), 10_000);
    const unmanaged = { managed: false, qmpSocket, bootOrder: { record: true, capMs: 60_000, quietMs: 1_000, idleMs: 60_000, pollMs: 200 } };
    const spec: ImageSpec = { name: 'img', source: { http: { url: origin.url, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE };
    const b1 = await makeBackend('u', unmanaged);
    await b1.ensureImage(spec);
    const paused = async (b: QsdBackend): Promise<boolean | undefined> => (await b.qmpExecute<Array<{ paused: boolean }>>('query-block-jobs'))[0]?.paused;
    await waitFor('record window armed (stream paused)', async () => (await paused(b1)) === true);
    await b1.close();
    const b2 = await makeBackend('u', { managed: false, qmpSocket });
    const ready = await waitFor('hydration after the restart', async () => {
      const i = await imageOf(b2, 'img');
      return i?.phase === 'ready' || i?.phase === 'failed' ? i : undefined;
    });
    expect(ready.phase).toBe('ready');
    await b2.deleteImage('img');
    await b2.close();
    // Again with a window running: deleting the image stops it and closes every node.
    const b3 = await makeBackend('u', unmanaged);
    await b3.ensureImage(spec);
    await b3.ensureDisk({ id: 'd1', source: { kind: 'image', image: 'img' } });
    await b3.deleteDisk('d1');
    await b3.deleteImage('img');
    expect(await b3.qmpExecute('query-block-jobs')).toEqual([]);
    expect(await b3.qmpExecute('query-named-block-nodes', { flat: true })).toEqual([]);
    expect(await fs.readdir(path.join(stateDir, 'images'))).toEqual([]);
  });

  it('a stream that runs again during the record window (a source switch, a restart) records nothing rather than a wrong profile', async () => {
    const image = randomBytes(SIZE);
    const origin = await startOrigin(image, { bytesPerSecond: 4 * MiB });
    origins.push(origin);
    const log = memoryLog();
    const n = await makeBackend('r', { logger: log.logger, bootOrder: { record: true, capMs: 20_000, quietMs: 1_500, idleMs: 20_000, pollMs: 200 } });
    await n.ensureImage({ name: 'img', source: { http: { url: origin.url, sha256: sha(image) } }, format: 'raw', sizeBytes: SIZE });
    const disk = await n.ensureDisk({ id: 'd1', source: { kind: 'image', image: 'img' } });
    const ctrl = await n.ensureController({ name: 'slot-01/root', diskRef: disk.ref, readonly: false });
    const jobs = await n.qmpExecute<Array<{ device: string; paused: boolean }>>('query-block-jobs');
    expect(jobs[0]?.paused).toBe(true);
    await frontEndAsync(ctrl.socketPath, [{ op: 'read', sector: (5 * MiB) / 512, len: K }]);
    await n.qmpExecute('block-job-resume', { device: jobs[0]!.device });
    const done = await waitFor('hydration', async () => {
      const i = await imageOf(n, 'img');
      return i?.phase === 'ready' || i?.phase === 'failed' ? i : undefined;
    });
    expect(done.phase).toBe('ready');
    expect(done.bootProfile).toBeUndefined();
    await waitFor('the record gives up', async () => log.lines().some((l) => l.event === 'image.boot.failed' && /ran again during the record window/.test(String(l.err))));
  });
});
