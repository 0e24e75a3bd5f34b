/**
 * doctor's judgement: a pure function from the facts gathered on a node (./gather.ts) to
 * findings a person can act on, so that tests feed it broken facts directly.
 */
import { formatBytes } from '../../api/quantity.js';

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
