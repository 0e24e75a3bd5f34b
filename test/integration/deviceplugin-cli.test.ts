import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { REPO_ROOT, cliArgv } from '../helpers/cli.js';
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

describe('the DaemonSet wires backend health into the device plugin', () => {
  type Container = { name: string; args?: string[]; command?: string[] };
  async function daemonSetContainers(): Promise<Container[]> {
    const docs = parseAllDocuments(await readFile(path.join(REPO_ROOT, 'manifests/node/daemonset.yaml'), 'utf8')).map((d) => d.toJS() as { spec: { template: { spec: { containers: Container[] } } } });
    return docs[0]!.spec.template.spec.containers;
  }
  const flag = (c: Container | undefined, name: string): string | undefined => c?.args?.find((a) => a.startsWith(`${name}=`))?.slice(name.length + 1);

  it("probes the socket spdk_tgt serves RPC on, the one the agent uses", async () => {
    const cs = await daemonSetContainers();
    const tgt = cs.find((c) => c.name === 'spdk-tgt');
    const rpc = tgt?.args?.[(tgt.args.indexOf('-r')) + 1];
    expect(rpc).toBeDefined();
    expect(flag(cs.find((c) => c.name === 'device-plugin'), '--health-socket')).toBe(rpc);
    expect(flag(cs.find((c) => c.name === 'agent'), '--spdk-socket')).toBe(rpc);
  });

  it('with the DaemonSet args, slots turn Unhealthy while the backend socket is dead and Healthy when it is back', async () => {
    const cs = await daemonSetContainers();
    const dpArgs = cs.find((c) => c.name === 'device-plugin')?.args ?? [];
    // The node's paths, moved under a temp dir; no metrics port (tests run side by side).
    const state = path.join(root, 'n');
    const map = (a: string): string => a.replace('/var/lib/kubevirt-spdk', state).replace('/var/lib/kubelet/device-plugins', path.join(root, 'dp2'));
    const args = dpArgs.slice(1).filter((a) => !a.startsWith('--metrics-port')).map(map);
    const healthSocket = flag({ name: 'dp', args }, '--health-socket') as string;
    await mkdir(path.dirname(healthSocket), { recursive: true });
    await mkdir(path.join(root, 'dp2'));
    const k2 = await FakeKubelet.start(path.join(root, 'dp2'));
    const backend = async (): Promise<net.Server> => {
      await rm(healthSocket, { force: true });
      const srv = net.createServer((s) => s.destroy());
      await new Promise<void>((resolve) => srv.listen(healthSocket, resolve));
      return srv;
    };
    let srv = await backend();
    const { command, args: argv } = cliArgv(dpArgs[0] as string, ...args);
    const proc = spawn(command, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    child = proc;
    try {
      await k2.waitForRegistration(1, 30_000);
      const w = k2.watch();
      const healthOf = async (want: string): Promise<string[]> => {
        for (;;) {
          const list = await w.next(15_000);
          const states = [...new Set(list.map((d) => d.health))];
          if (states.length === 1 && states[0] === want) return states;
        }
      };
      expect(await healthOf('Healthy')).toEqual(['Healthy']);
      // spdk_tgt dies: its socket refuses connections.
      await new Promise<void>((resolve) => srv.close(() => resolve()));
      await rm(healthSocket, { force: true });
      expect(await healthOf('Unhealthy')).toEqual(['Unhealthy']);
      srv = await backend();
      expect(await healthOf('Healthy')).toEqual(['Healthy']);
      w.close();
    } finally {
      proc.kill('SIGTERM');
      await new Promise((resolve) => proc.once('exit', resolve));
      srv.close();
      await k2.stop();
    }
  }, 60_000);
});
