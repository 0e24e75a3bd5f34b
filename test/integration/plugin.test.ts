/**
 * The `kubevirt-spdk plugin` process as KubeVirt >= v1.9 meets it (VEP 190): kubelet starts it
 * as a native sidecar of virt-launcher, virt-launcher waits for the socket named by our Plugin
 * CR and calls MutateDomain over it; kubelet stops it with SIGTERM after the VM.
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
import { VirtLauncherPluginHook } from '../unit/plugin/plugin-client.js';
import { PLUGIN_NAME } from '../../src/plugin/server.js';

const FIXTURES = path.join(REPO_ROOT, 'test/fixtures/converter');

describe('kubevirt-spdk plugin (process)', () => {
  let base: string | undefined;
  const procs: ChildProcess[] = [];

  afterEach(async () => {
    await killAll(procs);
    if (base) await rm(base, { recursive: true, force: true });
    base = undefined;
  });

  it('answers virt-launcher\'s MutateDomain on the Plugin CR\'s socket and exits 0 on SIGTERM, removing the socket', async () => {
    base = await mkdtemp(path.join(os.tmpdir(), 'kvp-'));
    const socketPath = path.join(base, PLUGIN_NAME, 'hook.sock');
    const proc = startCli(['plugin', '--socket', socketPath, '--vhost-socket-dir', '/run/spdk'], procs);

    const launcher = new VirtLauncherPluginHook(base, PLUGIN_NAME, socketPath);
    await launcher.waitForSocket(15_000);
    const vmi = Buffer.from(JSON.stringify(parseYaml(readFileSync(path.join(FIXTURES, 'vmi-fedora.yaml'), 'utf8'))));
    const out = (await launcher.mutateDomain(readFileSync(path.join(FIXTURES, 'kubevirt-q35.xml')), vmi, 'Boot')).toString('utf8');
    expect(out).toContain('<source type="unix" path="/run/spdk/rootdisk">');
    expect(out).toContain('<alias name="ua-spdk-data"/>');

    proc.kill('SIGTERM');
    expect(await exitedWithin(proc, 20_000)).toBe(0);
    expect(await readdir(path.join(base, PLUGIN_NAME))).toEqual([]);
    const lines = proc.out.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toContainEqual(expect.objectContaining({ component: 'plugin', invocationContext: 'Boot', vmi: 'default/vmi-fedora', disks: ['rootdisk', 'data'] }));
  });

  it('refuses a socket path KubeVirt would refuse (no .sock)', async () => {
    const proc = startCli(['plugin', '--socket', '/tmp/kubevirt-spdk-hook'], procs);
    expect(await exited(proc)).toBe(2);
    expect(proc.out.join('')).toContain('--socket: "/tmp/kubevirt-spdk-hook" must end with .sock');
  });
});
