/**
 * A real spdk_tgt for the opt-in suite (`SPDK_TGT=/path/to/spdk_tgt make test-spdk`): started
 * on a temporary RPC socket and vhost dir, killed afterwards. Without SPDK_TGT the suites that
 * use it are skipped with a printed reason; `make test` never needs SPDK.
 *
 * Memory: `-s 512` from hugepages when enough are free (mount hugetlbfs and reserve pages,
 * e.g. `echo 1024 > /proc/sys/vm/nr_hugepages`), else `--no-huge` (enough for the control
 * path these tests drive; a guest's data path wants hugepages). SPDK_TGT_ARGS replaces the
 * memory arguments.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { SpdkBackend } from '../../src/backend/spdk/backend.js';
import type { ImageSpec, ObservedImage } from '../../src/backend/types.js';
import type { Metrics } from '../../src/metrics/metrics.js';
import type { SpdkApi } from '../../src/spdk/api.js';
import { SpdkRpcClient } from '../../src/spdk/client.js';

export interface TargetBinary {
  /** `SPDK_TGT` or `SPDK_TGT_OLD`. */
  label: string;
  bin: string;
}

/** The real targets named by the environment: SPDK_TGT and, for a second version, SPDK_TGT_OLD. */
export function spdkTargets(): TargetBinary[] {
  const out: TargetBinary[] = [];
  for (const label of ['SPDK_TGT', 'SPDK_TGT_OLD']) {
    const bin = process.env[label];
    if (bin) {
      if (!existsSync(bin)) throw new Error(`${label}=${bin}: no such file`);
      out.push({ label, bin });
    }
  }
  return out;
}

/** Prints why a real-SPDK suite does not run (once per file) and says whether it should. */
export function realSpdkOrSkip(suite: string): TargetBinary[] {
  const targets = spdkTargets();
  if (targets.length === 0) process.stdout.write(`[${suite}] skipped: SPDK_TGT is not set (SPDK_TGT=/path/to/spdk_tgt make test-spdk runs it)\n`);
  return targets;
}

/** describe.each over the targets, or one skipped suite (vitest refuses a file with none). */
export function cases(targets: TargetBinary[]): TargetBinary[] {
  return targets.length ? targets : [{ label: 'SPDK_TGT unset', bin: '' }];
}

export function memoryArgs(): string[] {
  const custom = process.env.SPDK_TGT_ARGS;
  if (custom !== undefined) return custom.split(/\s+/).filter(Boolean);
  let freeMiB = 0;
  try {
    const info = readFileSync('/proc/meminfo', 'utf8');
    const free = Number(/HugePages_Free:\s+(\d+)/.exec(info)?.[1] ?? 0);
    const size = Number(/Hugepagesize:\s+(\d+) kB/.exec(info)?.[1] ?? 0);
    freeMiB = (free * size) / 1024;
  } catch {
    // No /proc: no hugepages.
  }
  // Another target may be starting at the same time: keep a margin.
  return freeMiB >= 768 ? ['-s', '512'] : ['-s', '512', '--no-huge'];
}

export class RealTarget {
  proc: ChildProcess | undefined;
  readonly log: string[] = [];
  version = '';
  /** Set by kill(): an exit after it is expected. */
  private killing = false;
  private exitWaiters: Array<(why: string) => void> = [];
  /** Why the last process exited on its own (a crash), if it did. */
  crashed: string | undefined;

  constructor(
    readonly bin: string,
    readonly socketPath: string,
    readonly vhostDir: string,
    private readonly args: string[] = memoryArgs(),
  ) {}

  /** Starts spdk_tgt and resolves once its subsystems are initialised. */
  async start(): Promise<void> {
    await fs.mkdir(this.vhostDir, { recursive: true });
    await fs.rm(this.socketPath, { force: true });
    // No `-i <shm id>`: without it SPDK unlinks its hugepage files, so a SIGKILL frees them
    // (with one, they stay allocated after the process is gone). No core lock: several
    // targets share the test machine's core 0.
    const proc = spawn(this.bin, ['-m', '0x1', ...this.args, '-r', this.socketPath, '-S', this.vhostDir, '--disable-cpumask-locks'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    this.killing = false;
    this.crashed = undefined;
    const collect = (b: Buffer): void => {
      this.log.push(b.toString());
      if (this.log.length > 2000) this.log.splice(0, 1000);
    };
    proc.stdout?.on('data', collect);
    proc.stderr?.on('data', collect);
    proc.once('exit', (code, sig) => {
      if (this.killing || this.proc !== proc) return;
      this.crashed = `spdk_tgt (pid ${proc.pid ?? '?'}) exited by itself (${sig ?? `code ${code ?? '?'}`})`;
      for (const w of this.exitWaiters.splice(0)) w(this.crashed);
    });
    const client = new SpdkRpcClient({ socketPath: this.socketPath, timeoutMs: 60_000, reconnect: { initialDelayMs: 20, maxDelayMs: 200 } });
    try {
      const exited = new Promise<never>((_, reject) =>
        proc.once('exit', (code, sig) => reject(new Error(`spdk_tgt exited (${code ?? sig}) while starting:\n${this.logTail(3000)}`))),
      );
      exited.catch(() => undefined);
      await Promise.race([client.call('framework_wait_init'), exited]);
      const v = (await client.call('spdk_get_version')) as { version: string };
      this.version = v.version;
    } finally {
      await client.close();
    }
  }

  /** The last `chars` characters of its output. */
  logTail(chars = 2000): string {
    return this.log.join('').slice(-chars);
  }

  /**
   * Resolves with a description once the running process exits without kill() (a crash);
   * at once if it already did. Never resolves while it runs.
   */
  died(): Promise<string> {
    if (this.crashed !== undefined) return Promise.resolve(this.crashed);
    return new Promise((resolve) => this.exitWaiters.push(resolve));
  }

  /** Kills it (SIGKILL by default) and waits until it is gone. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    this.killing = true;
    const gone = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill(signal);
    const timer = setTimeout(() => p.kill('SIGKILL'), 15_000);
    await gone;
    clearTimeout(timer);
  }

  /** Kill and start again on the same sockets, as a crash and a restart by systemd would. */
  async restart(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    await this.kill(signal);
    await this.start();
  }
}

/** A temp directory short enough for the vhost sockets below it (sun_path is 108 bytes). */
/** A loopback TCP port nobody listens on right now (for NVMe-oF listeners). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export async function shortTempDir(prefix: string): Promise<string> {
  return fs.mkdtemp(path.join('/tmp', prefix));
}

export interface BackendNode {
  dir: string;
  tgt: RealTarget;
  client: SpdkRpcClient;
  backend: SpdkBackend;
}

export interface RealBackendOptions {
  /** Prefix of the node's temp dir (short: vhost socket paths must fit sun_path). */
  prefix: string;
  /** Size of the aio file under the lvstore. */
  sizeMiB: number;
  blockSize?: 512 | 4096;
  metrics?: Metrics;
  /** The node's name (its NVMe-oF host NQN). */
  nodeName?: string;
  /** RPC deadline of the backend's client (default: the client's own). */
  timeoutMs?: number;
  lazyLocal?: boolean;
  /** Makes the lvstore's base bdev (e.g. a delay bdev over an aio file in `dir`) and returns its name. */
  baseBdev?: (client: SpdkRpcClient, dir: string) => Promise<string>;
  /** Wraps the backend's API (e.g. a gate the test opens); `release` runs before the backend closes. */
  api?: (client: SpdkRpcClient) => { api: SpdkApi; release?: () => void };
}

/**
 * A real spdk_tgt in a fresh short temp dir (`prefix`) and an SpdkBackend started on it, its
 * lvstore on an aio file of `sizeMiB` (or on `baseBdev`). Cleanups (dir, target, backend) go
 * onto `cleanups`, for an afterEach to run in reverse order. With LAZY_DEBUG set, the
 * target's log tail is printed when it is killed.
 */
export async function backendOnRealTarget(bin: string, opts: RealBackendOptions, cleanups: Array<() => Promise<void>>): Promise<BackendNode> {
  const dir = await shortTempDir(opts.prefix);
  cleanups.push(() => fs.rm(dir, { recursive: true, force: true }));
  const tgt = new RealTarget(bin, path.join(dir, 'rpc.sock'), path.join(dir, 'vh'));
  await tgt.start();
  cleanups.push(async () => {
    if (process.env.LAZY_DEBUG) process.stdout.write(`--- ${opts.nodeName ?? opts.prefix} log ---\n${tgt.logTail(6000)}\n`);
    await tgt.kill('SIGKILL');
  });
  const client = new SpdkRpcClient({
    socketPath: tgt.socketPath,
    reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
    ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    ...(opts.metrics ? { metrics: opts.metrics } : {}),
  });
  const lvsFile = path.join(dir, 'lvs.img');
  const base = opts.baseBdev ? { kind: 'existing' as const, name: await opts.baseBdev(client, dir) } : { kind: 'aio' as const, filename: lvsFile, sizeMiB: opts.sizeMiB, ...(opts.blockSize ? { blockSize: opts.blockSize } : {}) };
  const wrapped = opts.api?.(client);
  const backend = new SpdkBackend({
    client,
    ...(wrapped ? { api: wrapped.api } : {}),
    ...(opts.nodeName !== undefined ? { nodeName: opts.nodeName } : {}),
    ...(opts.lazyLocal !== undefined ? { lazyLocal: opts.lazyLocal } : {}),
    vhostDir: tgt.vhostDir,
    stateDir: path.join(dir, 'spdk'),
    lvstore: { baseBdev: base },
  });
  cleanups.push(async () => {
    wrapped?.release?.();
    await backend.close();
  });
  await backend.start();
  return { dir, tgt, client, backend };
}

/**
 * Reads `bytes` bytes of an NVMe-oF/TCP export into `outFile` with `spdk_dd` (next to the
 * spdk_tgt binary): an initiator of our own, so tests compare what a disk really holds.
 */
export async function readExport(tgtBin: string, ref: { host: string; port: number; subnqn: string }, bytes: number, outFile: string, blockBytes = 4096): Promise<void> {
  const dd = path.join(path.dirname(tgtBin), 'spdk_dd');
  const config = `${outFile}.json`;
  const attach = { name: 'R', trtype: 'tcp', adrfam: 'ipv4', traddr: ref.host, trsvcid: String(ref.port), subnqn: ref.subnqn };
  await fs.writeFile(config, JSON.stringify({ subsystems: [{ subsystem: 'bdev', config: [{ method: 'bdev_nvme_attach_controller', params: attach }] }] }));
  const count = Math.ceil(bytes / blockBytes);
  // No core lock: test files run in parallel and targets already share core 0.
  const mem = ['-s', '256', '--disable-cpumask-locks', ...(memoryArgs().includes('--no-huge') ? ['--no-huge'] : [])];
  const fixed = [...mem, '--ib', 'Rn1', '--of', outFile, '--bs', String(blockBytes), '--count', String(count), '--json', config];
  const out: string[] = [];
  const code = await new Promise<number | null>((resolve) => {
    const p = spawn(dd, fixed, { stdio: ['ignore', 'pipe', 'pipe'] });
    p.stdout?.on('data', (b: Buffer) => out.push(b.toString()));
    p.stderr?.on('data', (b: Buffer) => out.push(b.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 60_000);
    p.once('exit', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  if (code !== 0) throw new Error(`spdk_dd exited ${code}:\n${out.join('').slice(-2000)}`);
}

/**
 * Node `name` of the node-to-node suites (lazy images, source failover): a real spdk_tgt with a
 * 1 GiB lvstore (4 KiB blocks) and a backend whose client waits up to 120 s. With `slow` the
 * lvstore sits on a delay bdev `slow` over an aio file, so a test can hold this node's reads
 * back (setReadLatency) while a peer must not finish copying from it.
 */
export async function peerNode(bin: string, name: string, slow: boolean, cleanups: Array<() => Promise<void>>): Promise<BackendNode> {
  return backendOnRealTarget(
    bin,
    {
      prefix: `kl${name.slice(-1)}-`,
      sizeMiB: 1024,
      blockSize: 4096,
      nodeName: name,
      timeoutMs: 120_000,
      ...(slow
        ? {
            baseBdev: async (client: SpdkRpcClient, dir: string): Promise<string> => {
              const lvsFile = path.join(dir, 'lvs.img');
              await fs.writeFile(lvsFile, Buffer.alloc(0));
              await fs.truncate(lvsFile, 1024 * 2 ** 20);
              await client.call('bdev_aio_create', { name: 'base', filename: lvsFile, block_size: 4096 });
              await client.call('bdev_delay_create', { base_bdev_name: 'base', name: 'slow', avg_read_latency: 0, p99_read_latency: 0, avg_write_latency: 0, p99_write_latency: 0 });
              return 'slow';
            },
          }
        : {}),
    },
    cleanups,
  );
}

/** Read latency of a `slow` peerNode's base, in microseconds (0: full speed). */
export async function setReadLatency(n: BackendNode, us: number): Promise<void> {
  for (const latency_type of ['avg_read', 'p99_read']) await n.client.call('bdev_delay_update_latency', { delay_bdev_name: 'slow', latency_type, latency_us: us });
}

/** `bytes` random bytes in `<dir>/image.raw` and the ImageSpec `img` of that file (with its sha256). */
export async function imageFile(dir: string, bytes: number): Promise<{ spec: ImageSpec; data: Buffer }> {
  const data = randomBytes(bytes);
  const file = path.join(dir, 'image.raw');
  await fs.writeFile(file, data);
  return { data, spec: { name: 'img', format: 'raw', source: { hostPath: { path: file, sha256: createHash('sha256').update(data).digest('hex') } } } };
}

/** The first `bytes` of the node's disk `id`, read through an NVMe-oF export of it (our own initiator). */
export async function readDisk(bin: string, n: BackendNode, id: string, bytes: number): Promise<Buffer> {
  const ref = await n.backend.exportDisk(id, { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: await freePort() } });
  if (ref.transport !== 'nvmf-tcp') throw new Error('spdk exports NVMe-oF');
  const out = path.join(n.dir, `${id}-${Date.now()}.bin`);
  try {
    await readExport(bin, ref, bytes, out, bytes >= 2 ** 20 ? 2 ** 20 : 4096);
    return (await fs.readFile(out)).subarray(0, bytes);
  } finally {
    await n.backend.unexportDisk(id);
    await fs.rm(out, { force: true });
  }
}

export const imageOf = async (n: BackendNode, image: string): Promise<ObservedImage | undefined> => (await n.backend.observe()).images.find((i) => i.name === image);
/** The NVMe-oF controllers the node's target has attached (a peer it reads from). */
export const nvmeControllers = async (n: BackendNode): Promise<string[]> => ((await n.client.call('bdev_nvme_get_controllers')) as Array<{ name: string }>).map((c) => c.name);
