/** `kubevirt-spdk convert` as a user runs it: files in, domain XML out, clear errors. */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, cliArgv } from '../../helpers/cli.js';

const FIXTURES = path.join(REPO_ROOT, 'test/fixtures/converter');

function runCli(...argv: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { command, args } = cliArgv(...argv);
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: REPO_ROOT });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

describe('kubevirt-spdk convert', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'cv-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('prints the rewritten domain', async () => {
    const res = await runCli('convert', '--vmi', path.join(FIXTURES, 'vmi-fedora.yaml'), '--domain', path.join(FIXTURES, 'kubevirt-q35.xml'));
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    expect(res.stdout).toBe(readFileSync(path.join(FIXTURES, 'golden/kubevirt-q35.xml'), 'utf8'));
  });

  it('reports a bad annotation as invalid input (exit 2) naming the field', async () => {
    const vmi = path.join(dir, 'vmi.yaml');
    await writeFile(vmi, readFileSync(path.join(FIXTURES, 'vmi-fedora.yaml'), 'utf8').replace('queues: 4', 'queues: 257'));
    const res = await runCli('convert', '--vmi', vmi, '--domain', path.join(FIXTURES, 'kubevirt-q35.xml'), '--socket-dir', '/run/x');
    expect(res.code).toBe(2);
    expect(res.stdout).toBe('');
    expect(res.stderr).toContain('metadata.annotations["kubevirt-spdk.io/volumes"][1].spdkVhostBlkDisk.queues: must be <= 256');
  });

  it('says what is missing', async () => {
    const res = await runCli('convert', '--vmi', path.join(FIXTURES, 'vmi-fedora.yaml'));
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('--vmi and --domain are required');
  });
});
