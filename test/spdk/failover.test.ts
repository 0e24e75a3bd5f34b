/**
 * Source failover between three real spdk_tgt processes over NVMe-oF/TCP on loopback: A and C
 * serve the same image (exportImage, each with its own controller-id range); B makes a lazy
 * golden over A's export and a disk of it; A's spdk_tgt is SIGKILLed mid-hydration (its read
 * latency held high so that B cannot finish first). B's hydration pauses and says since when;
 * retargetImage adds C's export as a second path of the same NVMe controller (nothing the lazy
 * golden names is detached: the recording's hazard), the inflate waiting on A goes on over C,
 * B's golden becomes ready, B lets go of both paths, and the disk reads back every byte.
 * Opt-in: SPDK_TGT (and SPDK_TGT_OLD for a second version).
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SpdkBackend } from '../../src/backend/spdk/backend.js';
import { BackendError, type ImageSpec, type ObservedImage, type RemoteDiskRef } from '../../src/backend/types.js';
import { SpdkRpcClient } from '../../src/spdk/client.js';
import { until } from '../helpers/process.js';
import { cases, freePort, readExport, realSpdkOrSkip, RealTarget, shortTempDir } from './target.js';

const targets = realSpdkOrSkip('test/spdk/failover.test.ts');
const MiB = 2 ** 20;
const IMAGE_BYTES = 256 * MiB;
/**
 * Read latency of A's base while B must not finish hydrating: a cluster copy waits this long,
 * so 64 clusters take over 12 s. Raised only once B's attach is done: real v25.09 crashed
 * (malloc corruption) when the attach's examine reads waited a second each.
 */
const SLOW_US = 200_000;

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});


interface Node {
  dir: string;
  tgt: RealTarget;
  client: SpdkRpcClient;
  backend: SpdkBackend;
}

/** spdk_tgt + backend for node `name`; `slow` puts the lvstore on a delay bdev `slow` over an aio file. */
async function node(bin: string, name: string, slow: boolean): Promise<Node> {
  const dir = await shortTempDir(`kl${name.slice(-1)}-`);
  cleanups.push(() => fs.rm(dir, { recursive: true, force: true }));
  const tgt = new RealTarget(bin, path.join(dir, 'rpc.sock'), path.join(dir, 'vh'));
  await tgt.start();
  cleanups.push(async () => {
    if (process.env.LAZY_DEBUG) process.stdout.write(`--- ${name} log ---\n${tgt.log.join('').slice(-6000)}\n`);
    await tgt.kill('SIGKILL');
  });
  const client = new SpdkRpcClient({ socketPath: tgt.socketPath, timeoutMs: 120_000, reconnect: { initialDelayMs: 20, maxDelayMs: 200 } });
  cleanups.push(() => client.close());
  const lvsFile = path.join(dir, 'lvs.img');
  if (slow) {
    await fs.writeFile(lvsFile, Buffer.alloc(0));
    await fs.truncate(lvsFile, 1024 * MiB);
    await client.call('bdev_aio_create', { name: 'base', filename: lvsFile, block_size: 4096 });
    await client.call('bdev_delay_create', { base_bdev_name: 'base', name: 'slow', avg_read_latency: 0, p99_read_latency: 0, avg_write_latency: 0, p99_write_latency: 0 });
  }
  const backend = new SpdkBackend({
    client: new SpdkRpcClient({ socketPath: tgt.socketPath, timeoutMs: 120_000, reconnect: { initialDelayMs: 20, maxDelayMs: 200 } }),
    nodeName: name,
    vhostDir: tgt.vhostDir,
    stateDir: path.join(dir, 'spdk'),
    lvstore: { baseBdev: slow ? { kind: 'existing', name: 'slow' } : { kind: 'aio', filename: lvsFile, sizeMiB: 1024, blockSize: 4096 } },
  });
  cleanups.push(() => backend.close());
  await backend.start();
  return { dir, tgt, client, backend };
}

async function setReadLatency(n: Node, us: number): Promise<void> {
  for (const latency_type of ['avg_read', 'p99_read']) await n.client.call('bdev_delay_update_latency', { delay_bdev_name: 'slow', latency_type, latency_us: us });
}

async function imageFile(dir: string): Promise<{ spec: ImageSpec; data: Buffer }> {
  const data = randomBytes(IMAGE_BYTES);
  const file = path.join(dir, 'image.raw');
  await fs.writeFile(file, data);
  return { data, spec: { name: 'img', format: 'raw', source: { hostPath: { path: file, sha256: createHash('sha256').update(data).digest('hex') } } } };
}

/** The first `bytes` of B's disk `id`, read through an NVMe-oF export of it (our own initiator). */
async function readDisk(bin: string, n: Node, id: string, bytes: number): Promise<Buffer> {
  const ref = await n.backend.exportDisk(id, { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: await freePort() } });
  if (ref.transport !== 'nvmf-tcp') throw new Error('spdk exports NVMe-oF');
  const out = path.join(n.dir, `${id}-${Date.now()}.bin`);
  try {
    await readExport(bin, ref, bytes, out, bytes >= MiB ? MiB : 4096);
    return (await fs.readFile(out)).subarray(0, bytes);
  } finally {
    await n.backend.unexportDisk(id);
    await fs.rm(out, { force: true });
  }
}

const imageOf = async (n: Node, image: string): Promise<ObservedImage | undefined> => (await n.backend.observe()).images.find((i) => i.name === image);
const nvmeControllers = async (n: Node): Promise<string[]> => ((await n.client.call('bdev_nvme_get_controllers')) as Array<{ name: string }>).map((c) => c.name);

describe.skipIf(targets.length === 0).each(cases(targets))('a hydration whose peer died moves to another peer (real spdk_tgt, $label)', ({ bin }) => {
  it('B\'s lazy golden over A goes on over C after A is SIGKILLed, and the disk keeps every byte', async () => {
    const a = await node(bin, 'node-a', true);
    const { spec, data } = await imageFile(a.dir);
    await a.backend.ensureImage(spec);
    const refA: RemoteDiskRef = await a.backend.exportImage('img', { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: await freePort() }, allowedNodes: ['node-b'] });
    const c = await node(bin, 'node-c', false);
    await c.backend.ensureImage({ ...spec, source: { hostPath: { path: path.join(a.dir, 'image.raw'), sha256: createHash('sha256').update(data).digest('hex') } } });
    const refC: RemoteDiskRef = await c.backend.exportImage('img', { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: await freePort() }, allowedNodes: ['node-b'] });

    const b = await node(bin, 'node-b', false);
    expect(await b.backend.ensureImage({ ...spec, peer: refA })).toMatchObject({ phase: 'hydrating' });
    await setReadLatency(a, SLOW_US);
    await b.backend.ensureDisk({ id: 'd-lazy', source: { kind: 'image', image: 'img' }, capacityBytes: IMAGE_BYTES });
    expect((await readDisk(bin, b, 'd-lazy', 16 * 1024)).equals(data.subarray(0, 16 * 1024))).toBe(true);

    await a.tgt.kill('SIGKILL');
    const paused = await until('B paused, saying since when', async () => {
      const img = await imageOf(b, 'img');
      return img?.sourceUnreachableSinceMs !== undefined ? img : undefined;
    }, 60_000);
    expect(paused).toMatchObject({ phase: 'hydrating', message: expect.stringMatching(/paused/) });

    // The origin is not a source the spdk golden can move to; another image's export is refused.
    await expect(b.backend.retargetImage(spec)).rejects.toMatchObject({ kind: 'invalid' });
    if (refC.transport !== 'nvmf-tcp') throw new Error('spdk exports NVMe-oF');
    const other = await b.backend.retargetImage({ ...spec, peer: { ...refC, subnqn: `${refC.subnqn}-other` } }).catch((e: unknown) => e);
    expect(other).toBeInstanceOf(BackendError);
    expect((other as BackendError).kind).toBe('invalid');

    await b.backend.retargetImage({ ...spec, peer: refC });
    // Idempotent.
    await b.backend.retargetImage({ ...spec, peer: refC });
    await until('B hydrated over C', async () => (await imageOf(b, 'img').catch(() => undefined))?.phase === 'ready', 170_000);
    await until('B let go of both paths', async () => (await nvmeControllers(b)).length === 0, 30_000);
    await c.backend.unexportImage('img');
    await c.tgt.kill('SIGKILL');
    const all = await readDisk(bin, b, 'd-lazy', IMAGE_BYTES);
    expect(all.equals(data)).toBe(true);
  });
});
