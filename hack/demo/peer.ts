/**
 * `make demo`, part two: a second "node" serves a VM disk from the first node's golden at once.
 * Two qemu-storage-daemons stand for two nodes. Node A caches the golden and exports it
 * read-only over NBD; node B's choice of source (the agent's chooser, fed what A's
 * NodeImageCache would say) is A, so B makes a lazy golden over A's export and serves a disk
 * from it while it hydrates in the background. When B's golden is whole, A stops serving and
 * goes away; B's VM keeps running. Prints one JSON line per event; stops on SIGTERM.
 *
 *   tsx hack/demo/peer.ts <work dir> <golden file> <sha256> <uid:gid> <mode>
 */
import { chown, chmod } from 'node:fs/promises';
import path from 'node:path';
import { chooseImageSource, ORIGIN } from '../../src/agent/image-sources.js';
import { QsdBackend } from '../../src/backend/qsd/index.js';
import type { ImageSpec } from '../../src/backend/types.js';
import { imageKey } from '../../src/contract/index.js';

const args = process.argv.slice(2);
if (args.length !== 5) throw new Error('usage: peer.ts <work> <golden> <sha256> <uid:gid> <mode>');
const [work = '', goldenFile = '', sha256 = '', owner = '', mode = ''] = args;
const [uid = 107, gid = 107] = owner.split(':').map(Number);
const say = (event: string, extra: Record<string, unknown> = {}): void => void process.stdout.write(`${JSON.stringify({ event, ...extra })}\n`);
const t0 = performance.now();
const ms = (): number => Math.round(performance.now() - t0);

const spec: ImageSpec = { name: 'demo-golden', source: { hostPath: { path: goldenFile, sha256 } }, format: 'raw' };
const key = imageKey(spec);
const a = new QsdBackend({ stateDir: path.join(work, 'node-a'), vhostDir: path.join(work, 'vhost-a'), managed: true });
// Throttled so that the VM visibly boots before B holds the image (and writes on after A is gone).
const b = new QsdBackend({ stateDir: path.join(work, 'node-b'), vhostDir: path.join(work, 'vhost-b'), managed: true, hydrationBytesPerSecond: 8 * 1024 * 1024 });

async function main(): Promise<void> {
  await Promise.all([a.start(), b.start()]);
  await a.ensureImage({ ...spec, name: key });
  const ref = await a.exportImage(key, { listenAddress: { kind: 'unix', path: path.join(work, 'a-nbd.sock') }, allowedNodes: ['node-b'] });
  say('a-exported', { key, export: ref.transport === 'nbd' ? ref.exportName : '' });

  const t1 = performance.now();
  const choice = chooseImageSource({ self: 'node-b', key, transport: 'nbd', goldens: [{ node: 'node-a', key, phase: 'ready', export: ref }] });
  say('b-source', { source: choice.kind === 'peer' ? choice.node : ORIGIN });
  await b.ensureImage({ ...spec, name: key, ...(choice.kind === 'peer' ? { peer: choice.ref } : {}) });
  const disk = await b.ensureDisk({ id: 'd-0d3e00000000-rootdisk', source: { kind: 'image', image: key }, capacityBytes: 64 * 1024 * 1024 });
  const ctl = await b.ensureController({ name: 'slot-01/rootdisk', diskRef: disk.ref, readonly: false });
  await chmod(ctl.socketPath, parseInt(mode, 8));
  await chown(ctl.socketPath, uid, gid);
  const img = (await b.observe()).images.find((i) => i.name === key);
  say('b-ready', { ms: Math.round(performance.now() - t1), socket: ctl.socketPath, phase: img?.phase, hydratedPercent: img?.hydratedPercent ?? 0 });

  let last = -1;
  for (;;) {
    const now = (await b.observe()).images.find((i) => i.name === key);
    if (now?.phase === 'ready') break;
    const pct = Math.round(now?.hydratedPercent ?? 0);
    if (pct >= last + 25) {
      say('b-hydrating', { ms: ms(), hydratedPercent: pct });
      last = pct;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  say('b-whole', { ms: ms() });
  await a.unexportImage(key);
  await a.close();
  say('a-gone', { ms: ms() });
}

let stopping = false;
const stop = async (): Promise<void> => {
  if (stopping) return;
  stopping = true;
  await Promise.allSettled([a.close(), b.close()]);
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
main().catch(async (e: unknown) => {
  say('error', { message: e instanceof Error ? e.message : String(e) });
  await stop();
});
