/**
 * The `kubevirt-spdk plugin` process as KubeVirt >= v1.9 meets it (VEP 190): kubelet starts it
 * as a native sidecar of virt-launcher, virt-launcher waits for the socket named by our Plugin
 * CR and calls MutateDomain over it; kubelet stops it with SIGTERM after the VM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { afterEach, describe, expect, it } from 'vitest';
import { REPO_ROOT, cliArgv } from '../helpers/cli.js';
import { VirtLauncherPluginHook } from '../unit/plugin/plugin-client.js';
import { PLUGIN_NAME } from '../../src/plugin/server.js';

const FIXTURES = path.join(REPO_ROOT, 'test/fixtures/converter');

function exited(child: ChildProcess): Promise<number | null> {
  return child.exitCode !== null ? Promise.resolve(child.exitCode) : new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/** A bound so that a process that never exits fails the test instead of hanging it. */
function exitedWithin(child: ChildProcess, ms: number): Promise<number | null | 'still running'> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<'still running'>((resolve) => (timer = setTimeout(() => resolve('still running'), ms)));
  return Promise.race([exited(child), bound]).finally(() => clearTimeout(timer));
}

describe('kubevirt-spdk plugin (process)', () => {
  let base: string | undefined;
  let child: ChildProcess | undefined;

  afterEach(async () => {
    if (child && child.exitCode === null) {
      child.kill('SIGKILL');
      await exited(child);
    }
    if (base) await rm(base, { recursive: true, force: true });
    child = undefined;
    base = undefined;
  });

  it('answers virt-launcher\'s MutateDomain on the Plugin CR\'s socket and exits 0 on SIGTERM, removing the socket', async () => {
    base = await mkdtemp(path.join(os.tmpdir(), 'kvp-'));
    const socketPath = path.join(base, PLUGIN_NAME, 'hook.sock');
    const { command, args } = cliArgv('plugin', '--socket', socketPath, '--vhost-socket-dir', '/run/spdk');
    const proc = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], cwd: REPO_ROOT });
    child = proc;
    let stderr = '';
    proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));

    const launcher = new VirtLauncherPluginHook(base, PLUGIN_NAME, socketPath);
    await launcher.waitForSocket(15_000);
    const vmi = Buffer.from(JSON.stringify(parseYaml(readFileSync(path.join(FIXTURES, 'vmi-fedora.yaml'), 'utf8'))));
    const out = (await launcher.mutateDomain(readFileSync(path.join(FIXTURES, 'kubevirt-q35.xml')), vmi, 'Boot')).toString('utf8');
    expect(out).toContain('<source type="unix" path="/run/spdk/rootdisk">');
    expect(out).toContain('<alias name="ua-spdk-data"/>');

    proc.kill('SIGTERM');
    expect(await exitedWithin(proc, 20_000)).toBe(0);
    expect(await readdir(path.join(base, PLUGIN_NAME))).toEqual([]);
    const lines = stderr.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toContainEqual(expect.objectContaining({ component: 'plugin', invocationContext: 'Boot', vmi: 'default/vmi-fedora', disks: ['rootdisk', 'data'] }));
  });

  it('refuses a socket path KubeVirt would refuse (no .sock)', async () => {
    const { command, args } = cliArgv('plugin', '--socket', '/tmp/kubevirt-spdk-hook');
    const proc = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], cwd: REPO_ROOT });
    child = proc;
    let stderr = '';
    proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    expect(await exited(proc)).toBe(2);
    expect(stderr).toContain('--socket: "/tmp/kubevirt-spdk-hook" must end with .sock');
  });
});
