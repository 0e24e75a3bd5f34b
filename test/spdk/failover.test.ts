/**
 * Source failover between three real spdk_tgt processes over NVMe-oF/TCP on loopback: A and C
 * serve the same image (exportImage, each with its own controller-id range); B makes a lazy
 * golden over A's export and a disk of it; A's spdk_tgt is SIGKILLed mid-hydration (its read
 * latency held high so that B cannot finish first). B's hydration pauses and says since when;
 * retargetImage adds C's export as a second path of the same NVMe controller (nothing the lazy
 * golden names is detached: the recording's hazard), the inflate waiting on A goes on over C
 * (across a restart of B's spdk_tgt, which attaches C from the record), B's golden becomes
 * ready, B lets go of the source, and the disk reads back every byte.
 * Opt-in: SPDK_TGT (and SPDK_TGT_OLD for a second version).
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendError, type RemoteDiskRef } from '../../src/backend/types.js';
import { until } from '../helpers/process.js';
import { cases, freePort, imageFile, imageOf, nvmeControllers, peerNode, readDisk, realSpdkOrSkip, setReadLatency, type BackendNode } from './target.js';

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

const node = (bin: string, name: string, slow: boolean): Promise<BackendNode> => peerNode(bin, name, slow, cleanups);

describe.skipIf(targets.length === 0).each(cases(targets))('a hydration whose peer died moves to another peer (real spdk_tgt, $label)', ({ bin }) => {
  it('B\'s lazy golden over A goes on over C after A is SIGKILLed, and the disk keeps every byte', async () => {
    const a = await node(bin, 'node-a', true);
    const { spec, data } = await imageFile(a.dir, IMAGE_BYTES);
    await a.backend.ensureImage(spec);
    const refA: RemoteDiskRef = await a.backend.exportImage('img', { listenAddress: { kind: 'tcp', host: '127.0.0.1', port: await freePort() }, allowedNodes: ['node-b'] });
    const c = await node(bin, 'node-c', true);
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

    // C is slow too while B's spdk_tgt restarts right after the switch: B attaches C (its
    // record), not the dead A, and the lazy lvols come back over it.
    await setReadLatency(c, SLOW_US);
    await b.backend.retargetImage({ ...spec, peer: refC });
    // Idempotent.
    await b.backend.retargetImage({ ...spec, peer: refC });
    await b.tgt.restart();
    await until('B back with its lazy golden', async () => (await imageOf(b, 'img').catch(() => undefined))?.phase === 'hydrating', 60_000);
    await setReadLatency(c, 0);
    await until('B hydrated over C', async () => (await imageOf(b, 'img').catch(() => undefined))?.phase === 'ready', 170_000);
    await until('B let go of the source', async () => (await nvmeControllers(b)).length === 0, 30_000);
    await c.backend.unexportImage('img');
    await c.tgt.kill('SIGKILL');
    const all = await readDisk(bin, b, 'd-lazy', IMAGE_BYTES);
    expect(all.equals(data)).toBe(true);
  });
});
