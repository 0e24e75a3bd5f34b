import { describe, expect, it } from 'vitest';
import { checkLvstore, diagnose, parseMeminfo, render, type DoctorFacts, type Finding } from '../../../src/cli/commands/doctor.js';

const GiB = 2 ** 30;

/** A node where everything is right; each test breaks one thing. */
function healthy(): DoctorFacts {
  return {
    backend: 'spdk',
    spdk: { socket: '/run/spdk.sock', reachable: true, version: 'SPDK v24.01', lvstores: [{ name: 'kvs', totalBytes: 64 * GiB, freeBytes: 60 * GiB }] },
    lvstoreName: 'kvs',
    hugepages: { source: '/proc/meminfo', totalPages: 1024, freePages: 512, pageSizeBytes: 2 * 2 ** 20 },
    vhostDir: { path: '/var/lib/kubevirt-spdk/vhost', exists: true, isDirectory: true, mode: 0o755, uid: 0, gid: 0 },
    qemu: { uid: 107, gid: 107 },
    kubelet: { socket: '/var/lib/kubelet/device-plugins/kubelet.sock', exists: true, isSocket: true },
    kube: { available: true, featureGates: ['Sidecar', 'LiveMigration'], webhook: { service: 'kubevirt-spdk/kubevirt-spdk-webhook', reachable: true } },
  };
}

const byCheck = (f: Finding[], check: string): Finding[] => f.filter((x) => x.check === check);
const failures = (f: Finding[]): Finding[] => f.filter((x) => x.status === 'fail');

describe('doctor checks (pure)', () => {
  it('a healthy node has no failures and no warnings', () => {
    const f = diagnose(healthy());
    expect(f.filter((x) => x.status !== 'ok')).toEqual([]);
    expect(render(f)).toContain('All checks passed.');
  });

  it('SPDK down is a failure naming the socket and how to fix it', () => {
    const facts = healthy();
    facts.spdk = { socket: '/run/spdk.sock', reachable: false, error: 'connect ENOENT /run/spdk.sock' };
    const f = failures(diagnose(facts));
    expect(f).toHaveLength(1);
    expect(f[0]).toMatchObject({ check: 'spdk' });
    expect(f[0]?.message).toContain('/run/spdk.sock');
    expect(f[0]?.message).toContain('ENOENT');
    expect(f[0]?.fix).toMatch(/spdk_tgt/);
  });

  it('an SPDK version other than v24.01 is a warning, not a failure', () => {
    const facts = healthy();
    facts.spdk = { ...facts.spdk!, version: 'SPDK v23.09' };
    const f = byCheck(diagnose(facts), 'spdk');
    expect(f[0]?.status).toBe('warn');
    expect(f[0]?.message).toContain('v23.09');
  });

  it('no hugepages fails for SPDK but not for the qsd backend', () => {
    const facts = healthy();
    facts.hugepages = { source: '/proc/meminfo', totalPages: 0, freePages: 0, pageSizeBytes: 2 * 2 ** 20 };
    const f = byCheck(diagnose(facts), 'hugepages');
    expect(f[0]).toMatchObject({ status: 'fail' });
    expect(f[0]?.message).toMatch(/no hugepages/);
    expect(f[0]?.fix).toMatch(/nr_hugepages/);
    const qsd: DoctorFacts = { ...facts, backend: 'qsd', qsd: { binary: 'qemu-storage-daemon', version: '8.2.0' } };
    delete qsd.spdk;
    expect(failures(diagnose(qsd))).toEqual([]);
  });

  it('a vhost dir QEMU cannot enter fails with the mode and a chmod', () => {
    const facts = healthy();
    facts.vhostDir = { ...facts.vhostDir, mode: 0o700 };
    const f = failures(diagnose(facts));
    expect(f).toHaveLength(1);
    expect(f[0]?.message).toContain('0700');
    expect(f[0]?.message).toContain('uid 107');
    expect(f[0]?.fix).toBe('chmod 0755 /var/lib/kubevirt-spdk/vhost');
    // Group access for QEMU's group is enough.
    facts.vhostDir = { ...facts.vhostDir, mode: 0o750, gid: 107 };
    expect(failures(diagnose(facts))).toEqual([]);
  });

  it('a missing or world-writable vhost dir is reported', () => {
    const facts = healthy();
    facts.vhostDir = { path: '/nope', exists: false };
    expect(failures(diagnose(facts))[0]?.message).toContain('/nope does not exist');
    facts.vhostDir = { path: '/tmp/x', exists: true, isDirectory: true, mode: 0o777, uid: 0, gid: 0 };
    expect(byCheck(diagnose(facts), 'vhost-dir')[0]?.status).toBe('warn');
  });

  it('lvstore: missing is a warning, full is a failure, nearly full a warning', () => {
    expect(checkLvstore('kvs', [])).toMatchObject({ status: 'warn' });
    expect(checkLvstore('kvs', [{ name: 'other', totalBytes: GiB, freeBytes: GiB }]).message).toContain('SPDK has: other');
    expect(checkLvstore('kvs', [{ name: 'kvs', totalBytes: GiB, freeBytes: 0 }])).toMatchObject({ status: 'fail' });
    expect(checkLvstore('kvs', [{ name: 'kvs', totalBytes: 100 * GiB, freeBytes: 5 * GiB }])).toMatchObject({ status: 'warn' });
    expect(checkLvstore('kvs', [{ name: 'kvs', totalBytes: 100 * GiB, freeBytes: 50 * GiB }]).message).toContain('50Gi free of 100Gi');
  });

  it('cluster: Sidecar gate off and webhook unreachable each fail; no kubeconfig skips with a note', () => {
    const facts = healthy();
    facts.kube = { available: true, featureGates: ['LiveMigration'], webhook: { service: 'ns/wh', reachable: false, error: 'no endpoints available' } };
    const f = failures(diagnose(facts));
    expect(f.map((x) => x.check).sort()).toEqual(['kubevirt', 'webhook']);
    expect(f.find((x) => x.check === 'kubevirt')?.message).toContain('"Sidecar" is off');
    expect(f.find((x) => x.check === 'webhook')?.message).toContain('no endpoints available');
    facts.kube = { available: false, reason: 'no kubeconfig' };
    facts.kubelet = { socket: '/k/kubelet.sock', exists: false };
    const g = diagnose(facts);
    expect(failures(g)).toEqual([]);
    expect(byCheck(g, 'kubevirt')[0]).toMatchObject({ status: 'skip', message: 'cluster checks skipped: no kubeconfig' });
    expect(byCheck(g, 'kubelet')[0]?.status).toBe('skip');
  });

  it('parses /proc/meminfo hugepage counters', () => {
    const text = 'MemTotal: 100 kB\nHugePages_Total:     512\nHugePages_Free:      500\nHugepagesize:       2048 kB\n';
    expect(parseMeminfo(text)).toEqual({ totalPages: 512, freePages: 500, pageSizeBytes: 2 * 2 ** 20 });
    expect(parseMeminfo('MemTotal: 1 kB\n')).toBeUndefined();
  });
});
