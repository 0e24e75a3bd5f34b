import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cliArgv } from '../helpers/cli.js';
import { FakeKubelet } from '../helpers/fake-kubelet.js';

let root: string;
let kubelet: FakeKubelet;
let child: ChildProcess | undefined;

beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'dpc-'));
  await mkdir(path.join(root, 'dp'));
  kubelet = await FakeKubelet.start(path.join(root, 'dp'));
});

afterAll(async () => {
  child?.kill('SIGKILL');
  await kubelet.stop();
  await rm(root, { recursive: true, force: true });
});

describe('kubevirt-spdk device-plugin (CLI)', () => {
  it('registers with kubelet, advertises the configured slots, and cleans up on SIGTERM', async () => {
    const { command, args } = cliArgv(
      'device-plugin', '--plugin-dir', path.join(root, 'dp'), '--vhost-dir', path.join(root, 'vh'), '--state-dir', path.join(root, 'st'), '--slots', '3',
    );
    const proc = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    child = proc;
    let logs = '';
    proc.stderr?.on('data', (c: Buffer) => (logs += c.toString()));
    const reg = await kubelet.waitForRegistration(1, 30_000);
    expect(reg.resource_name).toBe('kubevirt-spdk.io/vhost-slot');
    const w = kubelet.watch();
    expect((await w.next()).map((d) => d.ID)).toEqual(['slot-00', 'slot-01', 'slot-02']);
    w.close();
    const exited = new Promise<number | null>((resolve) => proc.once('exit', resolve));
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(logs).toContain('device plugin stopped');
    await expect(access(path.join(root, 'dp', reg.endpoint))).rejects.toThrow();
  });

  it('refuses a PreStartContainer timeout kubelet would cut first', async () => {
    const { command, args } = cliArgv('device-plugin', '--vhost-dir', 'v', '--state-dir', 's', '--prestart-timeout', '40s');
    const proc = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    proc.stderr?.on('data', (c: Buffer) => (err += c.toString()));
    expect(await new Promise<number | null>((resolve) => proc.once('exit', resolve))).toBe(2);
    expect(err).toContain("--prestart-timeout: 40s must be a duration above 0 and below kubelet's 30s");
  });
});
