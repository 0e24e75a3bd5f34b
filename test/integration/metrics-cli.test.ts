/** `--metrics-port` and `--log-level` as a user passes them to the real CLI processes. */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { SpdkSimulator } from '../../testing/spdk-sim/index.js';
import { cliArgv } from '../helpers/cli.js';
import { until } from '../helpers/process.js';

let dir: string | undefined;
let sim: SpdkSimulator | undefined;
let agent: ChildProcess | undefined;

afterEach(async () => {
  if (agent && agent.exitCode === null && agent.signalCode === null) {
    const gone = once(agent, 'exit');
    agent.kill('SIGKILL');
    await gone;
  }
  agent = undefined;
  await sim?.stop();
  sim = undefined;
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

const get = (url: string): Promise<{ status: number; body: string }> =>
  new Promise((resolve, reject) => {
    http
      .get(url, { timeout: 5000 }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      })
      .on('error', reject);
  });

describe('CLI observability flags', () => {
  it('the standalone agent serves /metrics with its disks and SPDK calls on --metrics-port', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'mc-'));
    await mkdir(path.join(dir, 'vh'));
    await mkdir(path.join(dir, 'vmis'));
    sim = new SpdkSimulator({ socketPath: path.join(dir, 'spdk.sock'), vhostDir: path.join(dir, 'vh') });
    await sim.start();
    await writeFile(path.join(dir, 'images.yaml'), '');
    await writeFile(
      path.join(dir, 'vmis', 'a.yaml'),
      'apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: a\n  namespace: default\n  uid: uid-a\n  annotations:\n    kubevirt-spdk.io/slot: slot-01\n    kubevirt-spdk.io/volumes: |\n      - {name: data, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}}\n',
    );
    const owner = process.getuid?.() === 0 ? '107:107' : `${process.getuid?.() ?? 0}:${process.getgid?.() ?? 0}`;
    const { command, args } = cliArgv(
      'agent', '--standalone', '--backend', 'spdk', '--spdk-socket', path.join(dir, 'spdk.sock'), '--vmis', path.join(dir, 'vmis'), '--images', path.join(dir, 'images.yaml'),
      '--vhost-dir', path.join(dir, 'vh'), '--state-dir', path.join(dir, 'st'), '--lvstore-size', '256Mi', '--socket-owner', owner, '--metrics-port', '0', '--node', 'node-1', '--log-level', 'info',
    );
    const p = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, LOG_LEVEL: 'silent' } });
    agent = p;
    const lines: string[] = [];
    p.stderr?.on('data', (b: Buffer) => lines.push(...b.toString().split('\n')));
    // --log-level overrides LOG_LEVEL=silent: the listening line must be there.
    const port = await until('the metrics listener', () => {
      const l = lines.find((x) => x.includes('"event":"metrics-listening"'));
      return l ? (JSON.parse(l) as { port: number; node?: string }) : undefined;
    });
    expect(port.node).toBe('node-1');
    const text = await until('a Ready disk on /metrics', async () => {
      const r = await get(`http://127.0.0.1:${port.port}/metrics`);
      return /^kubevirt_spdk_disks\{phase="Ready"\} 1$/m.test(r.body) ? r.body : undefined;
    });
    expect(text).toMatch(/^kubevirt_spdk_disk_provision_duration_seconds_count\{source="blank"\} 1$/m);
    expect(text).toMatch(/^kubevirt_spdk_spdk_rpc_duration_seconds_count\{method="vhost_create_blk_controller"\} \d+$/m);
    expect(text).toMatch(/^kubevirt_spdk_process_cpu_seconds_total /m);
    expect((await get(`http://127.0.0.1:${port.port}/readyz`)).status).toBe(200);
    const exited = once(p, 'exit');
    p.kill('SIGTERM');
    expect((await exited)[0]).toBe(0);
  });

  it('rejects a bad --log-level naming the flag and the allowed levels', async () => {
    const { command, args } = cliArgv('status', '--log-level', 'loud');
    const err = await promisify(execFile)(command, args, { timeout: 20_000 }).then(
      () => undefined,
      (e: { code?: number; stderr?: string }) => e,
    );
    expect(err?.code).toBe(2);
    expect(err?.stderr).toContain('--log-level: "loud" must be one of fatal, error, warn, info, debug, trace, silent');
  });
});
