/**
 * doctor's eyes: reads the machine (the SPDK socket through the typed client, /proc, /sys, the
 * vhost directory, the cluster when a kubeconfig is there) and never judges (./checks.ts does).
 */
import { execFile } from 'node:child_process';
import { access, readFile, readdir, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Registry } from 'prom-client';
import { createMetrics } from '../../metrics/metrics.js';
import { SpdkApi } from '../../spdk/api.js';
import { SpdkRpcClient } from '../../spdk/client.js';
import { SpdkError } from '../../spdk/errors.js';
import { parseMeminfo, type DoctorFacts } from './checks.js';

export interface GatherOptions {
  backend: 'spdk' | 'qsd';
  spdkSocket: string;
  vhostDir: string;
  lvstore: string;
  qemu: { uid: number; gid: number };
  kubeletDir: string;
  meminfo: string;
  sysHugepages: string;
  qsdBinary: string;
  kubeconfig?: string;
  namespace: string;
  timeoutMs: number;
  /** Skip the cluster checks even when a kubeconfig is there. */
  skipKube?: boolean;
}

async function gatherSpdk(o: GatherOptions): Promise<DoctorFacts['spdk']> {
  // A private registry: doctor's own calls are not the node's RPC metrics.
  const client = new SpdkRpcClient({ socketPath: o.spdkSocket, reconnect: false, timeoutMs: o.timeoutMs, metrics: createMetrics(new Registry()) });
  // Replies are checked against the method schemas: a surprising one is reported, not trusted.
  const api = new SpdkApi(client);
  try {
    const v = await api.spdkGetVersion();
    const lvstores = await api.bdevLvolGetLvstores();
    return {
      socket: o.spdkSocket,
      reachable: true,
      version: v.version,
      lvstores: lvstores.map((l) => ({ name: l.name, totalBytes: l.total_data_clusters * l.cluster_size, freeBytes: l.free_clusters * l.cluster_size })),
    };
  } catch (e) {
    const error = e instanceof SpdkError ? e.rpcMessage : (e as Error).message;
    return { socket: o.spdkSocket, reachable: false, error };
  } finally {
    await client.close();
  }
}

async function gatherHugepages(o: GatherOptions): Promise<DoctorFacts['hugepages']> {
  try {
    const parsed = parseMeminfo(await readFile(o.meminfo, 'utf8'));
    if (parsed) return { source: o.meminfo, ...parsed };
  } catch {
    // Fall back to sysfs (containers may hide /proc/meminfo's hugepage lines).
  }
  try {
    let totalPages = 0;
    let freePages = 0;
    let pageSizeBytes = 0;
    for (const d of await readdir(o.sysHugepages)) {
      const m = /^hugepages-(\d+)kB$/.exec(d);
      if (!m) continue;
      const n = Number((await readFile(path.join(o.sysHugepages, d, 'nr_hugepages'), 'utf8')).trim());
      const free = Number((await readFile(path.join(o.sysHugepages, d, 'free_hugepages'), 'utf8')).trim());
      // Report the size that has pages (SPDK takes whichever the kernel gives it).
      if (n > 0 || pageSizeBytes === 0) pageSizeBytes = Number(m[1]) * 1024;
      totalPages += n;
      freePages += free;
    }
    return { source: o.sysHugepages, totalPages, freePages, pageSizeBytes: pageSizeBytes || 2 * 2 ** 20 };
  } catch (e) {
    return { source: `${o.meminfo} and ${o.sysHugepages}`, error: (e as Error).message };
  }
}

async function gatherVhostDir(dir: string): Promise<DoctorFacts['vhostDir']> {
  try {
    const st = await stat(dir);
    return { path: dir, exists: true, isDirectory: st.isDirectory(), mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
  } catch (e) {
    return { path: dir, exists: false, ...((e as NodeJS.ErrnoException).code === 'ENOENT' ? {} : { error: (e as Error).message }) };
  }
}

async function gatherKubelet(dir: string): Promise<DoctorFacts['kubelet']> {
  const socket = path.join(dir, 'kubelet.sock');
  try {
    const st = await stat(socket);
    return { socket, exists: true, isSocket: st.isSocket() };
  } catch {
    return { socket, exists: false };
  }
}

async function gatherQsd(o: GatherOptions): Promise<DoctorFacts['qsd']> {
  try {
    const { stdout } = await promisify(execFile)(o.qsdBinary, ['--version'], { timeout: o.timeoutMs });
    const m = /version\s+(\S+)/i.exec(stdout);
    return { binary: o.qsdBinary, version: m?.[1] ?? stdout.trim().split('\n')[0] ?? '' };
  } catch (e) {
    return { binary: o.qsdBinary, error: (e as Error).message.split('\n')[0] ?? String(e) };
  }
}

/** Which kubeconfig to use (--kubeconfig, or KUBECONFIG through the config), or why there is none (then the cluster checks are skipped). */
async function kubeconfigSource(o: GatherOptions): Promise<{ file?: string; inCluster?: true } | { none: string }> {
  if (o.kubeconfig) return { file: o.kubeconfig };
  if (process.env.KUBERNETES_SERVICE_HOST) return { inCluster: true };
  const home = path.join(os.homedir(), '.kube', 'config');
  try {
    await access(home);
    return { file: home };
  } catch {
    return { none: 'no kubeconfig (pass --kubeconfig, set KUBECONFIG, or run in a pod)' };
  }
}

async function gatherKube(o: GatherOptions): Promise<DoctorFacts['kube']> {
  const src = await kubeconfigSource(o);
  if ('none' in src) return { available: false, reason: src.none };
  const k8s = await import('@kubernetes/client-node');
  const kc = new k8s.KubeConfig();
  try {
    if (src.inCluster) kc.loadFromCluster();
    else kc.loadFromFile(src.file as string);
  } catch (e) {
    return { available: false, reason: `cannot load kubeconfig: ${(e as Error).message}` };
  }
  const out: Extract<DoctorFacts['kube'], { available: true }> = { available: true };
  const withTimeout = <T>(p: Promise<T>): Promise<T> =>
    Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no answer within ${o.timeoutMs}ms`)), o.timeoutMs).unref())]);
  try {
    const custom = kc.makeApiClient(k8s.CustomObjectsApi);
    const list = (await withTimeout(custom.listCustomObjectForAllNamespaces({ group: 'kubevirt.io', version: 'v1', plural: 'kubevirts' }))) as {
      items?: Array<{ spec?: { configuration?: { developerConfiguration?: { featureGates?: string[] } } } }>;
    };
    const kv = list.items?.[0];
    if (kv) out.featureGates = kv.spec?.configuration?.developerConfiguration?.featureGates ?? [];
    else out.kubevirtError = 'no KubeVirt CR in the cluster';
  } catch (e) {
    out.kubevirtError = (e as Error).message.split('\n')[0];
  }
  const service = `${o.namespace}/kubevirt-spdk-webhook`;
  try {
    const core = kc.makeApiClient(k8s.CoreV1Api);
    await withTimeout(core.connectGetNamespacedServiceProxyWithPath({ name: 'https:kubevirt-spdk-webhook:443', namespace: o.namespace, path: 'healthz' }));
    out.webhook = { service, reachable: true };
  } catch (e) {
    out.webhook = { service, reachable: false, error: (e as Error).message.split('\n')[0] };
  }
  return out;
}

export async function gatherFacts(o: GatherOptions): Promise<DoctorFacts> {
  const [spdk, qsd, hugepages, vhostDir, kubelet, kube] = await Promise.all([
    o.backend === 'spdk' ? gatherSpdk(o) : Promise.resolve(undefined),
    o.backend === 'qsd' ? gatherQsd(o) : Promise.resolve(undefined),
    gatherHugepages(o),
    gatherVhostDir(o.vhostDir),
    gatherKubelet(o.kubeletDir),
    o.skipKube ? Promise.resolve({ available: false as const, reason: '--no-kube' }) : gatherKube(o),
  ]);
  return {
    backend: o.backend,
    ...(spdk ? { spdk } : {}),
    ...(qsd ? { qsd } : {}),
    lvstoreName: o.lvstore,
    hugepages,
    vhostDir,
    qemu: o.qemu,
    kubelet,
    kube,
  };
}
