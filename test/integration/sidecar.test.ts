/**
 * The `kubevirt-spdk sidecar` process as virt-launcher meets it: a socket appears in the hooks
 * directory, Info and OnDefineDomain answer over it, SIGTERM stops it and removes the socket.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { afterEach, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/cli.js';
import { exited, exitedWithin, killAll, startCli } from '../helpers/process.js';
import { VirtLauncherHooks, hookClient } from '../unit/sidecar/hook-client.js';
import { sidecarArgs } from '../../webhooks/mutate.js';
import { convertDomain } from '../../src/converter/index.js';
import { parseVmi } from '../../src/api/vmi.js';

const FIXTURES = path.join(REPO_ROOT, 'test/fixtures/converter');

async function waitForSocket(dir: string, child: ChildProcess): Promise<string> {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`sidecar exited early with ${child.exitCode}`);
    const sock = (await readdir(dir)).find((f) => f.endsWith('.sock'));
    if (sock) return path.join(dir, sock);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('sidecar socket did not appear within 15 s');
}

describe('kubevirt-spdk sidecar (process)', () => {
  let dir: string | undefined;
  const procs: ChildProcess[] = [];

  afterEach(async () => {
    await killAll(procs);
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('serves Info and OnDefineDomain on its socket and stops cleanly on SIGTERM', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'hk-'));
    const proc = startCli(['sidecar', '--socket-dir', dir, '--vhost-socket-dir', '/run/spdk'], procs);

    const socketPath = await waitForSocket(dir, proc);
    const client = hookClient(socketPath);
    try {
      expect(await client.info()).toMatchObject({ name: 'kubevirt-spdk', versions: ['v1alpha1', 'v1alpha2', 'v1alpha3'] });
      const vmi = parseYaml(readFileSync(path.join(FIXTURES, 'vmi-fedora.yaml'), 'utf8')) as object;
      const res = (await client.call('v1alpha3', 'OnDefineDomain', {
        domainXML: readFileSync(path.join(FIXTURES, 'kubevirt-q35.xml')),
        vmi: Buffer.from(JSON.stringify(vmi)),
      })) as { domainXML: Buffer };
      const out = res.domainXML.toString('utf8');
      expect(out).toContain('<source type="unix" path="/run/spdk/rootdisk">');
      expect(out).toContain('<alias name="ua-spdk-data"/>');
    } finally {
      client.close();
    }

    proc.kill('SIGTERM');
    expect(await exited(proc)).toBe(0);
    expect(await readdir(dir)).toEqual([]);
    // Structured logs: one JSON object per line, the rewrite logged with the VMI bound.
    const lines = proc.out.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toContainEqual(expect.objectContaining({ component: 'sidecar', vmi: 'default/vmi-fedora', disks: ['rootdisk', 'data'] }));
  });

  it('exits after virt-launcher\'s v1alpha3 Shutdown call', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'hk-'));
    const proc = startCli(['sidecar', '--socket-dir', dir, '--version', 'v1alpha3'], procs);
    const client = hookClient(await waitForSocket(dir, proc));
    try {
      expect(await client.info()).toMatchObject({ versions: ['v1alpha3'] });
      await client.call('v1alpha3', 'Shutdown', {});
    } finally {
      client.close();
    }
    expect(await exited(proc)).toBe(0);
    expect(await readdir(dir)).toEqual([]);
  });

  const DOMAIN = (): Buffer => readFileSync(path.join(FIXTURES, 'kubevirt-q35.xml'));
  const VMI_DOC = (): unknown => parseYaml(readFileSync(path.join(FIXTURES, 'vmi-fedora.yaml'), 'utf8'));

  it('started with the args the webhook injects, it negotiates v1alpha3 with a KubeVirt >= v1.2 launcher and exits 0 after Info -> OnDefineDomain -> Shutdown', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'hk-'));
    const proc = startCli([...sidecarArgs('all'), '--socket-dir', dir], procs);
    const launcher = new VirtLauncherHooks();
    try {
      const reg = await launcher.collect(await waitForSocket(dir, proc));
      expect(reg.version).toBe('v1alpha3');
      expect([...launcher.perHookPoint.keys()].sort()).toEqual(['OnDefineDomain', 'Shutdown']);
      const vmiJSON = Buffer.from(JSON.stringify(VMI_DOC()));
      const out = await launcher.onDefineDomain(DOMAIN(), vmiJSON);
      // The very rewrite of the pure converter, nothing added on the way.
      expect(out.toString('utf8')).toBe(convertDomain(DOMAIN().toString('utf8'), parseVmi(VMI_DOC())));
      // QEMU has exited: virt-launcher asks its sidecars to stop.
      expect(await launcher.shutdown()).toBe(1);
      // It exits even while the launcher still holds its connections open.
      expect(await exitedWithin(proc, 20_000)).toBe(0);
    } finally {
      launcher.close();
    }
    expect(await readdir(dir)).toEqual([]);
    const lines = proc.out.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toContainEqual(expect.objectContaining({ msg: 'Shutdown requested by virt-launcher' }));
  });

  it('with a launcher older than KubeVirt v1.2 (v1alpha1/v1alpha2 only) it negotiates v1alpha2, is never asked to shut down, and stops on SIGTERM', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'hk-'));
    const proc = startCli([...sidecarArgs('all'), '--socket-dir', dir], procs);
    const launcher = new VirtLauncherHooks(['v1alpha2', 'v1alpha1']);
    try {
      expect((await launcher.collect(await waitForSocket(dir, proc))).version).toBe('v1alpha2');
      const out = await launcher.onDefineDomain(DOMAIN(), Buffer.from(JSON.stringify(VMI_DOC())));
      expect(out.toString('utf8')).toContain('<alias name="ua-spdk-rootdisk"/>');
      expect(await launcher.shutdown()).toBe(0);
    } finally {
      launcher.close();
    }
    expect(proc.exitCode).toBeNull();
    proc.kill('SIGTERM');
    expect(await exitedWithin(proc, 20_000)).toBe(0);
  });

  it('pinned to v1alpha2 (what older webhooks injected) it lists no Shutdown hook point, so a current launcher never stops it', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'hk-'));
    const proc = startCli(['--version', 'v1alpha2', '--socket-dir', dir], procs);
    const launcher = new VirtLauncherHooks();
    try {
      expect((await launcher.collect(await waitForSocket(dir, proc))).version).toBe('v1alpha2');
      expect([...launcher.perHookPoint.keys()]).toEqual(['OnDefineDomain']);
      expect(await launcher.shutdown()).toBe(0);
    } finally {
      launcher.close();
    }
  });

  it('refuses an unknown --version', async () => {
    const proc = startCli(['sidecar', '--version', 'v2'], procs);
    expect(await exited(proc)).toBe(2);
    expect(proc.out.join('')).toContain('--version: "v2" must be one of v1alpha1, v1alpha2, v1alpha3');
  });
});
