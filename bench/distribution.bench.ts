/**
 * Node-to-node image distribution (issue (b)): 1..8 "nodes" (one qemu-storage-daemon each, on
 * loopback) start a VM disk from the same image at once. For each way of getting the image
 * there: the bytes the origin served (goal: one image, not N), the time until every node's
 * disk is Ready (ensureImage + ensureDisk + ensureController), and the time until every node
 * holds the whole golden. The origin is one HTTP server whose bandwidth all nodes share (one
 * link, as an image registry's), so a single source saturates as N grows.
 *
 * Ways, the thesis's columns:
 * - local        the golden is already on the node (the baseline of the ratios)
 * - full copy    every node downloads and verifies the image before its disk exists
 * - lazy, origin every node reads the origin lazily (curl) and hydrates from it: the single source
 * - lazy, peers  node 1 reads the origin lazily and exports its golden at once; every other
 *                node reads node 1's golden over NBD (what the agent's chooser picks when the
 *                only holder hydrates from the origin) and hydrates from it
 * - seeded       N whole node agents in cluster mode (one fake API server, NodeImageCaches,
 *                default --seed-wait), nobody holds the image, N VMIs scheduled at once: the
 *                seed rule picks one node to read the origin and the others hydrate from it.
 *                This row includes the agents' control plane (announce, settle, publish, watch).
 * - agents, no seed  the same agents with `--seed-wait 0s`: the baseline of the seeded row
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { NodeAgent } from '../src/agent/agent.js';
import { ImagePeers } from '../src/agent/image-peers.js';
import { VmiStatusSchema } from '../src/api/status.js';
import { STATUS_ANNOTATION } from '../src/api/volumes.js';
import { QsdBackend } from '../src/backend/qsd/index.js';
import type { ImageSpec, RemoteDiskRef } from '../src/backend/types.js';
import { imageKey } from '../src/contract/index.js';
import { KubeApi } from '../src/kube/api.js';
import { ClusterAgent } from '../src/kube/cluster.js';
import { PodResourcesClient } from '../src/kube/podresources.js';
import { StatusPublisher } from '../src/kube/status-publisher.js';
import { silentLogger } from '../src/log.js';
import { CIMGS, launcherPod, PODS, vmiObject, VMIS } from '../test/helpers/cluster-rig.js';
import { FakeApiServer } from '../test/helpers/fake-apiserver.js';
import { startFakePodResources } from '../test/helpers/fake-podresources.js';
import { startOrigin } from '../test/helpers/origin.js';
import { fmt, type BenchSection } from './harness.js';

const MiB = 1024 * 1024;
const IMAGE_BYTES = 32 * MiB;
/** The origin's one link, shared by every node. */
const ORIGIN_BYTES_PER_SECOND = 64 * MiB;
const NODES = [1, 2, 4, 8];
/** The agent's default `--seed-wait` (the seed itself settles SEED_SETTLE_MS first). */
const SEED_WAIT_MS = 5_000;

type Way = 'local' | 'full copy' | 'lazy, origin' | 'lazy, peers' | 'agents, no seed' | 'seeded';

interface Result {
  way: Way;
  nodes: number;
  originBytes: number;
  readyMs: number;
  wholeMs: number;
}

async function waitWhole(b: QsdBackend, name: string): Promise<void> {
  for (;;) {
    const img = (await b.observe()).images.find((i) => i.name === name);
    if (img?.phase === 'ready') return;
    if (img?.phase === 'failed') throw new Error(`image failed: ${img.message ?? ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function run(way: Way, n: number, image: Buffer, root: string): Promise<Result> {
  const dir = await fs.mkdtemp(path.join(root, `${way.replace(/\W+/g, '-')}-${n}-`));
  const origin = await startOrigin(image, { linkBytesPerSecond: ORIGIN_BYTES_PER_SECOND });
  const sha256 = createHash('sha256').update(image).digest('hex');
  const name = `sha256-${sha256.slice(0, 40)}`;
  const backends: QsdBackend[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const b = new QsdBackend({ stateDir: path.join(dir, `n${i}`, 's'), vhostDir: path.join(dir, `n${i}`, 'v'), managed: true, lazyImages: way !== 'full copy', hydrationRetryMs: 100 });
      await b.start();
      backends.push(b);
    }
    const spec: ImageSpec = { name, source: way === 'local' ? { hostPath: { path: path.join(dir, 'local.raw'), sha256 } } : { http: { url: origin.url, sha256 } }, format: 'raw', sizeBytes: image.length };
    if (way === 'local') {
      await fs.writeFile(path.join(dir, 'local.raw'), image);
      for (const b of backends) await b.ensureImage(spec);
    }
    const disk = async (b: QsdBackend, s: ImageSpec): Promise<void> => {
      await b.ensureImage(s);
      const d = await b.ensureDisk({ id: 'd-000000000000-root', source: { kind: 'image', image: name }, capacityBytes: image.length });
      await b.ensureController({ name: 'slot-01/root', diskRef: d.ref, readonly: false });
    };
    const t0 = performance.now();
    let ready: Array<Promise<number>>;
    if (way === 'lazy, peers') {
      const first = backends[0];
      if (!first) throw new Error('no node');
      await first.ensureImage(spec);
      const ref: RemoteDiskRef = await first.exportImage(name, { listenAddress: { kind: 'unix', path: path.join(dir, 'n0.nbd') }, allowedNodes: backends.slice(1).map((_, i) => `n${i + 1}`) });
      ready = backends.map((b, i) => disk(b, i === 0 ? spec : { ...spec, peer: ref }).then(() => performance.now() - t0));
    } else {
      ready = backends.map((b) => disk(b, spec).then(() => performance.now() - t0));
    }
    const readyMs = Math.max(...(await Promise.all(ready)));
    await Promise.all(backends.map((b) => waitWhole(b, name)));
    const wholeMs = performance.now() - t0;
    return { way, nodes: n, originBytes: origin.served(), readyMs, wholeMs };
  } finally {
    for (const b of backends) await b.close().catch(() => undefined);
    await origin.stop();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** Polls `fn` every 20 ms until it holds; throws after `ms` (a bench must not hang). */
async function until(what: string, fn: () => boolean, ms = 300_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** N node agents in cluster mode, nobody holding the image, N VMIs at once: the seed rule end to end (or off: `--seed-wait 0s`). */
async function runAgents(way: 'agents, no seed' | 'seeded', n: number, image: Buffer, root: string): Promise<Result> {
  const dir = await fs.mkdtemp(path.join(root, `agents-${n}-`));
  const origin = await startOrigin(image, { linkBytesPerSecond: ORIGIN_BYTES_PER_SECOND });
  const api = await FakeApiServer.start();
  const sha256 = createHash('sha256').update(image).digest('hex');
  api.put(CIMGS, { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name: 'img' }, spec: { source: { http: { url: origin.url, sha256 } }, size: image.length } });
  const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  const nodes: Array<{ name: string; backend: QsdBackend; cluster: ClusterAgent; kubelet: { forceShutdown(): void }; slots: Array<{ namespace: string; pod: string; container: string; slot: string }> }> = [];
  try {
    for (let i = 0; i < n; i++) {
      const name = `node-${i}`;
      const nd = path.join(dir, name);
      await fs.mkdir(nd, { recursive: true });
      const backend = new QsdBackend({ stateDir: path.join(nd, 's'), vhostDir: path.join(nd, 'v'), managed: true, lazyImages: true, hydrationRetryMs: 100 });
      const { server: kubelet, socket, slots } = await startFakePodResources(nd);
      const kube = new KubeApi(api.kubeConfig(name));
      const retry = { initialMs: 50, maxMs: 500 };
      const status = new StatusPublisher({ node: name, api: kube, logger: silentLogger, retry });
      const stateDir = path.join(nd, 'st');
      const exportAddress = { kind: 'unix' as const, path: path.join(nd, 'nbd.sock') };
      const peers = new ImagePeers({ self: name, backend, stateDir, exportAddress, seed: { waitMs: way === 'seeded' ? SEED_WAIT_MS : 0 } });
      const agent = new NodeAgent({ backend, stateDir, socket: { ...owner, mode: 0o660 }, orphanGraceMs: 0, node: name, onVmiStatus: status.onVmiStatus, peers });
      const cluster = new ClusterAgent({ node: name, api: kube, agent, status, peers, imageExportAddress: exportAddress, podResources: new PodResourcesClient(socket), logger: silentLogger, retry });
      await backend.start();
      await cluster.start();
      nodes.push({ name, backend, cluster, kubelet, slots });
    }
    await until('every agent listed the cluster', () => nodes.every((x) => x.cluster.synced));
    const t0 = performance.now();
    for (const x of nodes) {
      const vmi = `vm-${x.name}`;
      api.put(VMIS, vmiObject(vmi, `uid-${vmi}`, `- name: root\n  spdkVhostBlkDisk: {image: img, capacity: ${image.length}}\n`, x.name));
      api.put(PODS, launcherPod(`virt-launcher-${vmi}`, `uid-${vmi}`, x.name));
      x.slots.push({ namespace: 'default', pod: `virt-launcher-${vmi}`, container: 'compute', slot: 'slot-01' });
    }
    const phase = (vmi: string): string | undefined => {
      const a = (api.get(VMIS, vmi, 'default')?.metadata?.annotations as Record<string, string> | undefined)?.[STATUS_ANNOTATION];
      return a === undefined ? undefined : VmiStatusSchema.parse(JSON.parse(a)).disks[0]?.phase;
    };
    await until('every disk Ready', () => nodes.every((x) => phase(`vm-${x.name}`) === 'Ready'));
    const readyMs = performance.now() - t0;
    // Whole as the backends see it, as in the other rows (the NodeImageCache says so at the agent's next round).
    const key = imageKey({ name: 'img', source: { http: { url: origin.url, sha256 } }, format: 'raw' });
    await Promise.all(nodes.map((x) => waitWhole(x.backend, key)));
    const wholeMs = performance.now() - t0;
    return { way, nodes: n, originBytes: origin.served(), readyMs, wholeMs };
  } finally {
    for (const x of nodes) {
      await x.cluster.stop().catch(() => undefined);
      await x.backend.close().catch(() => undefined);
      x.kubelet.forceShutdown();
    }
    await api.close();
    await origin.stop();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

export async function section(): Promise<BenchSection> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'bench-distrib-'));
  const image = Buffer.alloc(IMAGE_BYTES);
  // Data in the first three quarters, zeros after (hydration meets both).
  randomBytes((IMAGE_BYTES * 3) / 4).copy(image);
  const ways: Way[] = ['local', 'full copy', 'lazy, origin', 'lazy, peers', 'agents, no seed', 'seeded'];
  const results: Result[] = [];
  try {
    for (const n of NODES) for (const way of ways) results.push(way === 'seeded' || way === 'agents, no seed' ? await runAgents(way, n, image, root) : await run(way, n, image, root));
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
  const local = new Map(results.filter((r) => r.way === 'local').map((r) => [r.nodes, r.readyMs]));
  const rows = results.map((r) => {
    const base = local.get(r.nodes) ?? NaN;
    return [
      r.nodes,
      r.way,
      fmt(r.originBytes / IMAGE_BYTES, 2),
      fmt(r.readyMs, 0),
      r.way === 'local' ? '1.00' : fmt(r.readyMs / base, 1),
      r.way === 'local' ? '-' : fmt(r.wholeMs, 0),
    ];
  });
  return {
    area: 'Image distribution between nodes (qsd)',
    tables: [
      {
        title: `N nodes start one ${IMAGE_BYTES / MiB} MiB image at once; origin link ${ORIGIN_BYTES_PER_SECOND / MiB} MiB/s shared`,
        columns: ['nodes', 'way', 'origin bytes / image', 'every disk Ready (ms)', 'Ready vs local', 'every golden whole (ms)'],
        rows,
        notes: [
          'origin bytes / image: goal 1 for any N (the origin pays once per cluster); full copy and lazy-from-origin pay N.',
          'Ready vs local: time until the last of the N disks is Ready, over the same with the golden already local (same run, same N).',
          '"lazy, peers": node 1 reads the origin lazily and exports its (still hydrating) golden at once; the others read it over NBD. Blocks they read before node 1 has them are fetched by node 1 from the origin on their behalf, so origin bytes can exceed 1.',
          'The agent adds its own control-plane delay (NodeImageCache publish and watch) before a node sees a peer; the rows above do not measure it.',
          `"seeded": N agents in cluster mode (fake API server), nobody holds the image, N VMIs at once; one seed (rendezvous hash) reads the origin after settling 1 s for the others' announcements, the others wait for its export (--seed-wait ${SEED_WAIT_MS / 1000}s) and hydrate from it. Its times include the whole control plane (watch, announce, settle, publish, VMI status), so its baseline is "agents, no seed": the same agents with --seed-wait 0s (every node reads the origin lazily at once).`,
        ],
      },
    ],
  };
}
