/**
 * The `kubevirt-spdk sidecar` process as virt-launcher meets it: a socket appears in the hooks
 * directory, Info and OnDefineDomain answer over it, SIGTERM stops it and removes the socket.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { afterEach, describe, expect, it } from 'vitest';
import { REPO_ROOT, cliArgv } from '../helpers/cli.js';
import { hookClient } from '../unit/sidecar/hook-client.js';

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

function exited(child: ChildProcess): Promise<number | null> {
  return child.exitCode !== null ? Promise.resolve(child.exitCode) : new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

describe('kubevirt-spdk sidecar (process)', () => {
  let dir: string | undefined;
  let child: ChildProcess | undefined;

  afterEach(async () => {
    if (child && child.exitCode === null) {
      child.kill('SIGKILL');
      await exited(child);
    }
    if (dir) await rm(dir, { recursive: true, force: true });
    child = undefined;
    dir = undefined;
  });

  it('serves Info and OnDefineDomain on its socket and stops cleanly on SIGTERM', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'hk-'));
    const { command, args } = cliArgv('sidecar', '--socket-dir', dir, '--vhost-socket-dir', '/run/spdk');
    const proc = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], cwd: REPO_ROOT });
    child = proc;
    let stderr = '';
    proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));

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
    const lines = stderr.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toContainEqual(expect.objectContaining({ component: 'sidecar', vmi: 'default/vmi-fedora', disks: ['rootdisk', 'data'] }));
  });

  it('exits after virt-launcher\'s v1alpha3 Shutdown call', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'hk-'));
    const { command, args } = cliArgv('sidecar', '--socket-dir', dir, '--version', 'v1alpha3');
    const proc = spawn(command, args, { stdio: 'ignore', cwd: REPO_ROOT });
    child = proc;
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

  it('refuses an unknown --version', async () => {
    const { command, args } = cliArgv('sidecar', '--version', 'v2');
    const proc = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], cwd: REPO_ROOT });
    child = proc;
    let stderr = '';
    proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    expect(await exited(proc)).toBe(2);
    expect(stderr).toContain('--version: "v2" must be one of v1alpha1, v1alpha2, v1alpha3');
  });
});
