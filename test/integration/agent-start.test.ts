/**
 * The agent as a real process whose storage backend cannot start: it must exit non-zero with
 * a clear error, never hang (an open RPC socket used to keep it alive forever).
 */
import type { ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startSpdkSim, standaloneAgentArgs } from '../helpers/agent.js';
import { exited, killAll, startCli, type CliProcess } from '../helpers/process.js';

let dir: string;
const procs: ChildProcess[] = [];

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'as-'));
  await mkdir(path.join(dir, 'vmis'));
  await writeFile(path.join(dir, 'images.yaml'), '');
});
afterEach(async () => {
  await killAll(procs);
  await rm(dir, { recursive: true, force: true });
});

const agent = (...more: string[]): string[] => standaloneAgentArgs('spdk', { dir }, '--lvstore-size', '1Gi', ...more);
const startSim = (): Promise<CliProcess> => startSpdkSim(dir, procs);

describe('agent whose backend fails to start', () => {
  it('exits 1 naming the missing lvstore base (daemon mode, no hang)', async () => {
    await startSim();
    const p = startCli(agent('--lvstore-bdev', 'nvme-missing'), procs);
    expect(await exited(p)).toBe(1);
    expect(p.out.join('')).toMatch(/the spdk backend failed to start: notFound: .*base bdev nvme-missing of lvstore kvs does not exist/);
  });

  it('exits 1 when spdk_tgt never answers within --timeout (--once)', async () => {
    const p = startCli(agent('--once', '--timeout', '2s'), procs);
    expect(await exited(p)).toBe(1);
    expect(p.out.join('')).toMatch(/failed to start: not ready within 2000 ms \(is spdk_tgt running\?\)/);
  });

  it('exits 1 when the recorded lvstore block size and --lvstore-block-size disagree', async () => {
    await startSim();
    const first = startCli(agent('--once', '--lvstore-block-size', '4096'), procs);
    expect(await exited(first)).toBe(0);
    const again = startCli(agent('--once', '--lvstore-block-size', '512'), procs);
    expect(await exited(again)).toBe(1);
    expect(again.out.join('')).toMatch(/was created with block size 4096; the configured 512 cannot load it/);
  });
});
