/**
 * `kubevirt-spdk doctor`: checks this node and says what is wrong in plain words.
 *
 * Two halves: `gatherFacts` reads the machine (sockets, /proc, /sys, the directory, the
 * cluster when a kubeconfig is there) and never judges; `diagnose` is a pure function from
 * those facts to findings, so that tests feed it broken facts directly.
 */
import { execFile } from 'node:child_process';
import { access, readFile, readdir, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { promisify } from 'node:util';
import { Registry } from 'prom-client';
import { formatBytes, parseDuration } from '../../api/quantity.js';
import { createMetrics } from '../../metrics/metrics.js';
import { SpdkRpcClient } from '../../spdk/client.js';
import { SpdkError } from '../../spdk/errors.js';

const USAGE = `usage: kubevirt-spdk doctor [--backend spdk|qsd] [--spdk-socket PATH] [--vhost-dir DIR]
       [--lvstore NAME] [--qemu-uid 107] [--qemu-gid 107] [--kubelet-dir DIR]
       [--proc-meminfo FILE] [--sys-hugepages DIR] [--qsd-binary PATH]
       [--kubeconfig FILE | --no-kube] [--namespace kubevirt-spdk] [--timeout 3s] [--json]
exit status: 0 all good, 1 something is wrong, 2 bad usage
`;

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';
export interface Finding {
  check: string;
  status: CheckStatus;
  /** One sentence a person can act on. */
  message: string;
  fix?: string;
}

export interface LvstoreFact {
  name: string;
  totalBytes: number;
  freeBytes: number;
}

export interface DoctorFacts {
  backend: 'spdk' | 'qsd';
  spdk?: { socket: string; reachable: boolean; error?: string; version?: string; lvstores?: LvstoreFact[] };
  qsd?: { binary: string; version?: string; error?: string };
  /** Wanted lvstore name (the agent's default is kvs). */
  lvstoreName: string;
  hugepages: { source: string; totalPages: number; freePages: number; pageSizeBytes: number } | { source: string; error: string };
  vhostDir: { path: string; exists: boolean; isDirectory?: boolean; mode?: number; uid?: number; gid?: number; error?: string };
  qemu: { uid: number; gid: number };
  kubelet: { socket: string; exists: boolean; isSocket?: boolean };
  kube:
    | { available: false; reason: string }
    | {
        available: true;
        /** KubeVirt CR feature gates; undefined when no KubeVirt CR could be read. */
        featureGates?: string[];
        kubevirtError?: string;
        webhook?: { service: string; reachable: boolean; error?: string };
      };
}

/** Below this share of free space in the lvstore, new imports may fail soon. */
const LOW_FREE_RATIO = 0.1;
const TESTED_SPDK = /^SPDK v24\.01/;

// ---------------------------------------------------------------- pure checks

export function checkSpdk(f: DoctorFacts): Finding[] {
  if (f.backend === 'qsd') {
    const q = f.qsd;
    if (!q || q.error !== undefined || q.version === undefined)
      return [{ check: 'qsd', status: 'fail', message: `qemu-storage-daemon (${q?.binary ?? 'qemu-storage-daemon'}) cannot run: ${q?.error ?? 'no version output'}`, fix: 'install the qemu-utils / qemu-storage-daemon package, or pass --qsd-binary' }];
    return [{ check: 'qsd', status: 'ok', message: `qemu-storage-daemon ${q.version} runs` }];
  }
  const s = f.spdk;
  if (!s || !s.reachable)
    return [
      {
        check: 'spdk',
        status: 'fail',
        message: `SPDK is not answering on ${s?.socket ?? 'its socket'}${s?.error ? `: ${s.error}` : ''}`,
        fix: 'start spdk_tgt (with -r pointing at this socket), or pass --spdk-socket with the path spdk_tgt uses',
      },
    ];
  const out: Finding[] = [];
  const v = s.version ?? 'unknown version';
  out.push(
    TESTED_SPDK.test(v)
      ? { check: 'spdk', status: 'ok', message: `${v} answers on ${s.socket}` }
      : { check: 'spdk', status: 'warn', message: `${v} answers on ${s.socket}, but kubevirt-spdk is tested with SPDK v24.01`, fix: 'run SPDK v24.01 unless you have tested this version' },
  );
  out.push(checkLvstore(f.lvstoreName, s.lvstores ?? []));
  return out;
}

export function checkLvstore(name: string, lvstores: readonly LvstoreFact[]): Finding {
  const lvs = lvstores.find((l) => l.name === name);
  if (!lvs) {
    const others = lvstores.map((l) => l.name).join(', ');
    return {
      check: 'lvstore',
      status: 'warn',
      message: `no lvstore named "${name}"${others ? ` (SPDK has: ${others})` : ''}; the agent creates it on its first start`,
      fix: 'if the agent already ran, check its --lvstore-bdev / --lvstore-size flags and its log',
    };
  }
  const free = `${formatBytes(lvs.freeBytes)} free of ${formatBytes(lvs.totalBytes)}`;
  if (lvs.freeBytes === 0) return { check: 'lvstore', status: 'fail', message: `lvstore "${name}" is full (${free}): imports and written disks will fail`, fix: 'delete unused VMs or images, or lower --cache-max-size so images are evicted' };
  if (lvs.totalBytes > 0 && lvs.freeBytes / lvs.totalBytes < LOW_FREE_RATIO)
    return { check: 'lvstore', status: 'warn', message: `lvstore "${name}" is almost full (${free})`, fix: 'lower --cache-max-size, or grow the base device' };
  return { check: 'lvstore', status: 'ok', message: `lvstore "${name}": ${free}` };
}

export function checkHugepages(f: DoctorFacts): Finding {
  const h = f.hugepages;
  // qemu-storage-daemon uses ordinary memory; only SPDK needs hugepages.
  const severity: CheckStatus = f.backend === 'spdk' ? 'fail' : 'skip';
  if ('error' in h) return { check: 'hugepages', status: severity === 'skip' ? 'skip' : 'warn', message: `cannot read hugepage counters from ${h.source}: ${h.error}` };
  if (h.totalPages === 0) {
    if (severity === 'skip') return { check: 'hugepages', status: 'skip', message: 'no hugepages reserved (not needed by the qsd backend)' };
    return {
      check: 'hugepages',
      status: 'fail',
      message: 'no hugepages are reserved: spdk_tgt cannot start',
      fix: 'reserve some, e.g. `echo 1024 > /proc/sys/vm/nr_hugepages` (2 GiB of 2 MiB pages), or boot with hugepages=1024',
    };
  }
  const total = h.totalPages * h.pageSizeBytes;
  const free = h.freePages * h.pageSizeBytes;
  return { check: 'hugepages', status: 'ok', message: `${h.totalPages} hugepages of ${formatBytes(h.pageSizeBytes)} reserved (${formatBytes(total)}), ${formatBytes(free)} free` };
}

export function checkVhostDir(f: DoctorFacts): Finding[] {
  const d = f.vhostDir;
  if (!d.exists) return [{ check: 'vhost-dir', status: 'fail', message: `vhost directory ${d.path} does not exist${d.error ? ` (${d.error})` : ''}`, fix: `create it: mkdir -p ${d.path} && chmod 0755 ${d.path} (and start spdk_tgt with -S ${d.path})` }];
  if (!d.isDirectory) return [{ check: 'vhost-dir', status: 'fail', message: `${d.path} is not a directory`, fix: 'point --vhost-dir (and spdk_tgt -S) at a directory' }];
  const mode = d.mode ?? 0;
  const octal = `0${(mode & 0o777).toString(8)}`;
  const out: Finding[] = [];
  // QEMU (uid/gid 107 in virt-launcher) must reach the slot directories below to connect.
  const qemuCanEnter = (mode & 0o001) !== 0 || (d.uid === f.qemu.uid && (mode & 0o100) !== 0) || (d.gid === f.qemu.gid && (mode & 0o010) !== 0);
  if (!qemuCanEnter)
    out.push({
      check: 'vhost-dir',
      status: 'fail',
      message: `QEMU (uid ${f.qemu.uid}, gid ${f.qemu.gid}) cannot enter ${d.path} (mode ${octal}, owner ${d.uid}:${d.gid}): VMs will not reach their disks`,
      fix: `chmod 0755 ${d.path}`,
    });
  if ((mode & 0o002) !== 0)
    out.push({ check: 'vhost-dir', status: 'warn', message: `${d.path} is writable by everyone (mode ${octal}): any local user can plant sockets there`, fix: `chmod o-w ${d.path}` });
  if (out.length === 0) out.push({ check: 'vhost-dir', status: 'ok', message: `${d.path} exists (mode ${octal}, owner ${d.uid}:${d.gid}) and QEMU can enter it` });
  return out;
}

export function checkKubelet(f: DoctorFacts): Finding {
  const k = f.kubelet;
  if (k.exists && k.isSocket) return { check: 'kubelet', status: 'ok', message: `kubelet device-plugin socket ${k.socket} is there` };
  const why = k.exists ? `${k.socket} is not a socket` : `no kubelet device-plugin socket at ${k.socket}`;
  // Without a cluster this is a standalone machine: the device plugin is not used.
  if (!f.kube.available) return { check: 'kubelet', status: 'skip', message: `${why} (fine on a standalone machine)` };
  return { check: 'kubelet', status: 'fail', message: `${why}: the device plugin cannot register, so no vhost slots are offered`, fix: 'is the kubelet running here? pass --kubelet-dir if it uses another root directory' };
}

export function checkKube(f: DoctorFacts): Finding[] {
  const k = f.kube;
  if (!k.available) return [{ check: 'kubevirt', status: 'skip', message: `cluster checks skipped: ${k.reason}` }];
  const out: Finding[] = [];
  if (k.featureGates === undefined)
    out.push({ check: 'kubevirt', status: 'fail', message: `cannot read the KubeVirt CR${k.kubevirtError ? `: ${k.kubevirtError}` : ''}`, fix: 'is KubeVirt installed, and may this kubeconfig read kubevirts.kubevirt.io?' });
  else if (!k.featureGates.includes('Sidecar'))
    out.push({
      check: 'kubevirt',
      status: 'fail',
      message: 'the KubeVirt feature gate "Sidecar" is off: the hook sidecar will not run and VMs boot without their SPDK disks',
      fix: 'add Sidecar to spec.configuration.developerConfiguration.featureGates of the KubeVirt CR (see manifests/kubevirt/sidecar-feature-gate.yaml)',
    });
  else out.push({ check: 'kubevirt', status: 'ok', message: 'KubeVirt feature gate "Sidecar" is on' });
  const w = k.webhook;
  if (w === undefined) out.push({ check: 'webhook', status: 'skip', message: 'webhook not checked' });
  else if (w.reachable) out.push({ check: 'webhook', status: 'ok', message: `webhook service ${w.service} answers /healthz` });
  else out.push({ check: 'webhook', status: 'fail', message: `webhook service ${w.service} is not reachable${w.error ? `: ${w.error}` : ''}: new VMIs with SPDK disks are not validated or mutated`, fix: 'check the kubevirt-spdk-webhook Deployment and its Service endpoints' });
  return out;
}

export function diagnose(f: DoctorFacts): Finding[] {
  return [...checkSpdk(f), checkHugepages(f), ...checkVhostDir(f), checkKubelet(f), ...checkKube(f)];
}

export function render(findings: readonly Finding[]): string {
  const tag: Record<CheckStatus, string> = { ok: 'OK  ', warn: 'WARN', fail: 'FAIL', skip: 'SKIP' };
  const lines = findings.flatMap((x) => [`[${tag[x.status]}] ${x.check}: ${x.message}`, ...(x.fix && x.status !== 'ok' ? [`       fix: ${x.fix}`] : [])]);
  const bad = findings.filter((x) => x.status === 'fail').length;
  const warn = findings.filter((x) => x.status === 'warn').length;
  lines.push('', bad ? `${bad} problem(s) found${warn ? `, ${warn} warning(s)` : ''}.` : warn ? `No problems, ${warn} warning(s).` : 'All checks passed.');
  return `${lines.join('\n')}\n`;
}

/** Parses /proc/meminfo's hugepage lines. */
export function parseMeminfo(text: string): { totalPages: number; freePages: number; pageSizeBytes: number } | undefined {
  const num = (key: string): number | undefined => {
    const m = new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text);
    return m ? Number(m[1]) : undefined;
  };
  const total = num('HugePages_Total');
  const free = num('HugePages_Free');
  const sizeKb = num('Hugepagesize');
  if (total === undefined || free === undefined) return undefined;
  return { totalPages: total, freePages: free, pageSizeBytes: (sizeKb ?? 2048) * 1024 };
}

// ---------------------------------------------------------------- gathering (I/O)

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
  try {
    const v = (await client.call('spdk_get_version')) as { version?: unknown };
    const raw = (await client.call('bdev_lvol_get_lvstores')) as Array<{ name: string; total_data_clusters: number; free_clusters: number; cluster_size: number }>;
    return {
      socket: o.spdkSocket,
      reachable: true,
      version: typeof v.version === 'string' ? v.version : 'unknown version',
      lvstores: raw.map((l) => ({ name: l.name, totalBytes: l.total_data_clusters * l.cluster_size, freeBytes: l.free_clusters * l.cluster_size })),
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

/** Which kubeconfig to use, or why there is none (then the cluster checks are skipped). */
async function kubeconfigSource(o: GatherOptions): Promise<{ file?: string; inCluster?: true } | { none: string }> {
  if (o.kubeconfig) return { file: o.kubeconfig };
  if (process.env.KUBECONFIG) return { file: process.env.KUBECONFIG };
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

export async function run(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      backend: { type: 'string', default: 'spdk' },
      'spdk-socket': { type: 'string', default: '/var/tmp/spdk.sock' },
      'vhost-dir': { type: 'string', default: '/var/lib/kubevirt-spdk/vhost' },
      lvstore: { type: 'string', default: 'kvs' },
      'qemu-uid': { type: 'string', default: '107' },
      'qemu-gid': { type: 'string', default: '107' },
      'kubelet-dir': { type: 'string', default: '/var/lib/kubelet/device-plugins' },
      'proc-meminfo': { type: 'string', default: '/proc/meminfo' },
      'sys-hugepages': { type: 'string', default: '/sys/kernel/mm/hugepages' },
      'qsd-binary': { type: 'string', default: 'qemu-storage-daemon' },
      kubeconfig: { type: 'string' },
      'no-kube': { type: 'boolean', default: false },
      namespace: { type: 'string', default: 'kubevirt-spdk' },
      timeout: { type: 'string', default: '3s' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const problems: string[] = [];
  const backend = values.backend;
  if (backend !== 'spdk' && backend !== 'qsd') problems.push(`--backend: "${backend}" must be spdk or qsd`);
  const id = (name: string, v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v)) problems.push(`--${name}: "${v}" must be a number`);
    return n;
  };
  const uid = id('qemu-uid', values['qemu-uid']);
  const gid = id('qemu-gid', values['qemu-gid']);
  const timeoutMs = parseDuration(values.timeout);
  if (timeoutMs === undefined || timeoutMs <= 0) problems.push(`--timeout: "${values.timeout}" must be a duration above 0, like 3s or 500ms`);
  if (problems.length) {
    process.stderr.write(`kubevirt-spdk doctor: ${problems.join('; ')}\n${USAGE}`);
    return 2;
  }
  const facts = await gatherFacts({
    backend: backend as 'spdk' | 'qsd',
    spdkSocket: values['spdk-socket'],
    vhostDir: values['vhost-dir'],
    lvstore: values.lvstore,
    qemu: { uid, gid },
    kubeletDir: values['kubelet-dir'],
    meminfo: values['proc-meminfo'],
    sysHugepages: values['sys-hugepages'],
    qsdBinary: values['qsd-binary'],
    ...(values.kubeconfig ? { kubeconfig: values.kubeconfig } : {}),
    namespace: values.namespace,
    timeoutMs: timeoutMs ?? 0,
    skipKube: values['no-kube'],
  });
  const findings = diagnose(facts);
  if (values.json) process.stdout.write(`${JSON.stringify({ ok: !findings.some((x) => x.status === 'fail'), findings, facts }, null, 2)}\n`);
  else process.stdout.write(render(findings));
  return findings.some((x) => x.status === 'fail') ? 1 : 0;
}
