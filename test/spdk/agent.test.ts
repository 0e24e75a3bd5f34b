/**
 * The standalone agent (a real process) against a real spdk_tgt: the documented default
 * configuration, 4096-byte lvstores, live recovery after kill -9 and SIGTERM of spdk_tgt,
 * refusals (our own lvols as `bdev:`, over-long socket paths), failures that must end the
 * process, and the RPC debug log. Opt-in: `SPDK_TGT=/path/to/spdk_tgt make test-spdk`.
 */
import { createHash } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SpdkRpcClient } from '../../src/spdk/client.js';
import { goldenImageName, imageKey } from '../../src/contract/index.js';
import { SOCKET_OWNER as OWNER, SOCKET_OWNER_ARG, standaloneAgentArgs } from '../helpers/agent.js';
import { exited, killAll, startCli, until, vmiYaml } from '../helpers/process.js';
import { cases, RealTarget, realSpdkOrSkip, shortTempDir } from './target.js';

const targets = realSpdkOrSkip('test/spdk/agent.test.ts');
const MiB = 2 ** 20;

let dir: string | undefined;
let tgt: RealTarget | undefined;
const procs: ChildProcess[] = [];
afterEach(async () => {
  await killAll(procs);
  await tgt?.kill('SIGKILL');
  tgt = undefined;
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

interface Rig {
  dir: string;
  tgt: RealTarget;
  rpc<T = unknown>(method: string, params?: Record<string, unknown>): Promise<T>;
  agentArgs(...more: string[]): string[];
  image: Buffer;
  /** The golden lvol of CachedImage "base". */
  golden: string;
}

async function rig(bin: string, opts: { longVhostDir?: boolean } = {}): Promise<Rig> {
  const d = await shortTempDir('ks-');
  dir = d;
  const vhostDir = path.join(d, opts.longVhostDir ? 'v'.repeat(90) : 'vh');
  tgt = new RealTarget(bin, path.join(d, 'rpc.sock'), vhostDir);
  await tgt.start();
  const t = tgt;
  await mkdir(path.join(d, 'vmis'));
  // 6 MiB + 512 bytes of recognisable content: not a multiple of a cluster nor of 4096.
  const image = Buffer.alloc(6 * MiB + 512, 0);
  for (let i = 0; i < image.length; i += 4096) image.write(`block ${i}`, i);
  await writeFile(path.join(d, 'base.raw'), image);
  const sha256 = createHash('sha256').update(image).digest('hex');
  await writeFile(
    path.join(d, 'images.yaml'),
    `apiVersion: kubevirt-spdk.io/v1alpha1\nkind: CachedImage\nmetadata: {name: base}\nspec:\n  source: {hostPath: {path: ${path.join(d, 'base.raw')}, sha256: ${sha256}}}\n`,
  );
  return {
    dir: d,
    tgt: t,
    image,
    // Goldens are named by content (contract imageKey), not by the CachedImage name.
    golden: goldenImageName(imageKey({ name: 'base', source: { hostPath: { path: path.join(d, 'base.raw'), sha256 } }, format: 'raw' })),
    rpc: async <T,>(method: string, params?: Record<string, unknown>): Promise<T> => {
      const c = new SpdkRpcClient({ socketPath: t.socketPath, reconnect: false, timeoutMs: 30_000 });
      try {
        return (await c.call(method, params)) as T;
      } finally {
        await c.close();
      }
    },
    agentArgs: (...more: string[]) =>
      standaloneAgentArgs('spdk', { dir: d, spdkSocket: t.socketPath, vhostDir }, '--lvstore-size', '1Gi', '--socket-owner', SOCKET_OWNER_ARG, '--orphan-grace', '0s', ...more),
  };
}

async function vmis(r: Rig, n: number, volumes = '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 64Mi}\n- name: data\n  spdkVhostBlkDisk: {blank: {}, capacity: 16Mi}'): Promise<string[]> {
  const sockets: string[] = [];
  for (let i = 0; i < n; i++) {
    const slot = `slot-${String(i).padStart(2, '0')}`;
    await writeFile(path.join(r.dir, 'vmis', `v${i}.yaml`), vmiYaml(`v${i}`, slot, volumes));
    sockets.push(`${slot}/root`, `${slot}/data`);
  }
  return sockets;
}

async function once(r: Rig, ...more: string[]): Promise<{ code: number | null; out: string }> {
  const p = startCli(r.agentArgs('--once', '--timeout', '60s', ...more), procs);
  const code = await exited(p);
  return { code, out: p.out.join('') };
}

type Lvol = { name: string; is_degraded?: boolean };
type Ctrl = { ctrlr: string };
type Lvs = { name: string; block_size: number };

describe.skipIf(targets.length === 0).each(cases(targets))('agent on a real spdk_tgt ($label)', ({ bin }) => {
  it('starts with the default configuration (aio lvstore file, block size recorded) and serves sockets for QEMU', async () => {
    const r = await rig(bin);
    const sockets = await vmis(r, 2, '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 64Mi}');
    const first = await once(r);
    expect(first.out).toContain('all disks Ready');
    expect(first.code).toBe(0);
    const record = JSON.parse(await readFile(path.join(r.dir, 'st', 'spdk', 'lvstore-base.json'), 'utf8')) as { blockSize: number };
    expect(record.blockSize).toBe(512);
    expect((await r.rpc<Lvs[]>('bdev_lvol_get_lvstores'))[0]?.block_size).toBe(512);
    for (const s of sockets.filter((x) => x.endsWith('/root'))) {
      const st = await stat(path.join(r.tgt.vhostDir, s));
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o777).toBe(0o660);
      expect([st.uid, st.gid]).toEqual([OWNER.uid, OWNER.gid]);
    }
    // The golden is a read-only snapshot (with fan-outs of it when disks were cloned in
    // parallel); the import's helpers are gone.
    const lvols = await r.rpc<Lvol[]>('bdev_lvol_get_lvols');
    const cached = lvols.map((l) => l.name).filter((n) => n.startsWith('img-'));
    expect(cached.filter((n) => !new RegExp(`^${r.golden}\\.f\\d+$`).test(n))).toEqual([r.golden]);
    expect((await r.rpc<Array<{ name: string }>>('bdev_get_bdevs')).some((b) => b.name === `${r.golden}-src`)).toBe(false);

    // spdk_tgt restarts (nothing but the files survive): the same command finds everything again.
    await r.tgt.restart('SIGKILL');
    const again = await once(r);
    expect(again.code).toBe(0);
    expect((await r.rpc<Lvol[]>('bdev_lvol_get_lvols')).map((l) => l.name).sort()).toEqual(lvols.map((l) => l.name).sort());
  });

  it('imports into a 4096-byte lvstore (the image bdev uses the lvstore\'s block size) and keeps that size across restarts', async () => {
    const r = await rig(bin);
    await vmis(r, 1);
    const first = await once(r, '--lvstore-block-size', '4096');
    expect(first.out).toContain('all disks Ready');
    expect((await r.rpc<Lvs[]>('bdev_lvol_get_lvstores'))[0]?.block_size).toBe(4096);
    await r.tgt.restart('SIGTERM');
    // No flag: the recorded 4096 is used; a different flag is refused, naming both sizes.
    expect((await once(r)).code).toBe(0);
    const wrong = await once(r, '--lvstore-block-size', '512');
    expect(wrong.code).toBe(1);
    expect(wrong.out).toMatch(/block size 4096/);
  });

  for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
    it(`recovers every controller after ${signal} of spdk_tgt and a restart on the same sockets`, async () => {
      const r = await rig(bin);
      const sockets = await vmis(r, 5);
      const agent = startCli(r.agentArgs('--resync', '60s'), procs);
      const ctrlrs = async (): Promise<string[]> => (await r.rpc<Ctrl[]>('vhost_get_controllers')).map((c) => c.ctrlr).sort();
      await until('every controller', async () => ((await ctrlrs()).length === sockets.length ? true : undefined), 60_000);
      await r.tgt.restart(signal);
      await until('controllers recovered', async () => ((await ctrlrs()).join() === [...sockets].sort().join() ? true : undefined), 30_000);
      await until('recovery logged', () => agent.out.join('').includes('"event":"recovery"'), 10_000);
      const recovery = agent.out
        .join('')
        .split('\n')
        .find((l) => l.includes('"event":"recovery"'));
      expect(JSON.parse(recovery ?? '{}')).toMatchObject({ converged: true, controllers: sockets.length });
      // Nothing stayed degraded; sockets are QEMU's again.
      expect((await r.rpc<Lvol[]>('bdev_lvol_get_lvols')).filter((l) => l.is_degraded)).toEqual([]);
      for (const s of sockets) {
        const st = await until(`socket ${s}`, async () => {
          const x = await stat(path.join(r.tgt.vhostDir, s));
          return x.uid === OWNER.uid && (x.mode & 0o777) === 0o660 ? x : undefined;
        });
        expect(st.isSocket()).toBe(true);
      }
      agent.kill('SIGTERM');
      expect(await exited(agent)).toBe(0);
    });
  }

  it('exits 1 with a clear error when the lvstore base does not exist (no hang)', async () => {
    const r = await rig(bin);
    const p = startCli(r.agentArgs('--lvstore-bdev', 'Nvme0n1'), procs);
    expect(await exited(p)).toBe(1);
    expect(p.out.join('')).toMatch(/spdk backend failed to start: notFound: .*base bdev Nvme0n1 of lvstore kvs does not exist/);
  });

  it('refuses `bdev:` naming our own golden (read-write on every VM\'s base) and creates nothing for it', async () => {
    const r = await rig(bin);
    await vmis(r, 1, '- name: root\n  spdkVhostBlkDisk: {image: base, capacity: 64Mi}');
    expect((await once(r)).code).toBe(0);
    await writeFile(path.join(r.dir, 'vmis', 'evil.yaml'), vmiYaml('evil', 'slot-09', `- name: root\n  spdkVhostBlkDisk: {bdev: kvs/${r.golden}}`));
    const res = await once(r);
    expect(res.code).toBe(1);
    expect(res.out).toMatch(new RegExp(`evil root: Failed .*kvs/${r.golden} is an lvol of lvstore kvs`));
    expect((await r.rpc<Ctrl[]>('vhost_get_controllers')).map((c) => c.ctrlr)).not.toContain('slot-09/root');
  });

  it('fails a disk whose socket path would exceed sun_path before creating its lvol', async () => {
    const r = await rig(bin, { longVhostDir: true });
    await vmis(r, 1, '- name: a-rather-long-disk-name\n  spdkVhostBlkDisk: {blank: {}, capacity: 16Mi}');
    const res = await once(r);
    expect(res.code).toBe(1);
    expect(res.out).toMatch(/sun_path/);
    expect((await r.rpc<Lvol[]>('bdev_lvol_get_lvols')).filter((l) => !l.name.startsWith('img-'))).toEqual([]);
  });

  it('logs every RPC and its reply at --log-level debug', async () => {
    const r = await rig(bin);
    await vmis(r, 1, '- name: data\n  spdkVhostBlkDisk: {blank: {}, capacity: 16Mi}');
    const res = await once(r, '--log-level', 'debug');
    expect(res.code).toBe(0);
    const rpcs = res.out
      .split('\n')
      .filter((l) => l.includes('"event":"rpc"'))
      .map((l) => JSON.parse(l) as { method: string; ms: number; result?: unknown; error?: unknown });
    const methods = new Set(rpcs.map((x) => x.method));
    for (const m of ['spdk_get_version', 'rpc_get_methods', 'bdev_aio_create', 'bdev_lvol_create_lvstore', 'bdev_lvol_create', 'vhost_create_blk_controller']) expect(methods).toContain(m);
    expect(rpcs.every((x) => typeof x.ms === 'number' && ('result' in x || 'error' in x))).toBe(true);
  });
});
