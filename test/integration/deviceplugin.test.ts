import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdir, mkdtemp, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { DevicePluginServer } from '../../deviceplugin/server.js';
import { ManualHealth } from '../../deviceplugin/health.js';
import { FakeKubelet } from '../helpers/fake-kubelet.js';
import type { SlotStatus } from '../../src/api/status.js';

let root: string;
let kubelet: FakeKubelet;
let plugin: DevicePluginServer;
let health: ManualHealth;
let vhostDir: string;
let stateDir: string;

async function startPlugin(preStartTimeoutMs = 5000): Promise<void> {
  plugin = new DevicePluginServer({
    pluginDir: path.join(root, 'dp'),
    slotCount: 4,
    vhostDir,
    stateDir,
    health,
    preStartTimeoutMs,
    readinessPollMs: 20,
    checkIntervalMs: 100,
  });
  await plugin.start();
}

/** Writes the agent's slot report the way the agent does: temp file + rename. */
async function report(slot: string, ready: boolean, disks: SlotStatus['disks'] = []): Promise<string> {
  const status: SlotStatus = { slot, vmi: { namespace: 'default', name: 'vm1', uid: 'u1' }, ready, disks, updatedAt: new Date().toISOString() };
  const file = path.join(stateDir, 'slots', `${slot}.json`);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(`${file}.tmp`, JSON.stringify(status));
  await rename(`${file}.tmp`, file);
  return file;
}

function grpcCode(e: unknown): number | undefined {
  return (e as grpc.ServiceError).code;
}

/** True when the promise is still pending after the event loop had `ms` to settle it. */
async function stillPending(p: Promise<unknown>, ms = 300): Promise<boolean> {
  const marker = Symbol('pending');
  const r = await Promise.race([p.then(() => 'done', () => 'failed'), new Promise((resolve) => setTimeout(() => resolve(marker), ms))]);
  return r === marker;
}

beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'dp-'));
  vhostDir = path.join(root, 'vhost');
  stateDir = path.join(root, 'state');
  await mkdir(path.join(root, 'dp'));
  kubelet = await FakeKubelet.start(path.join(root, 'dp'));
  health = new ManualHealth(true);
});

afterEach(async () => {
  await plugin?.close();
  await kubelet?.stop();
  health.close();
  await rm(root, { recursive: true, force: true });
});

describe('device plugin against a fake kubelet', () => {
  it('serves, then registers the vhost-slot resource with pre_start_required', async () => {
    await startPlugin();
    const reg = await kubelet.waitForRegistration(1);
    expect(reg).toMatchObject({ version: 'v1beta1', endpoint: 'kubevirt-spdk-vhost.sock', resource_name: 'kubevirt-spdk.io/vhost-slot', options: { pre_start_required: true } });
    expect((await kubelet.options()).pre_start_required).toBe(true);
  });

  it('streams the device list at once and again on every health change', async () => {
    await startPlugin();
    await kubelet.waitForRegistration(1);
    const w = kubelet.watch();
    const first = await w.next();
    expect(first.map((d) => d.ID)).toEqual(['slot-00', 'slot-01', 'slot-02', 'slot-03']);
    expect(new Set(first.map((d) => d.health))).toEqual(new Set(['Healthy']));
    health.set(false);
    expect(new Set((await w.next()).map((d) => d.health))).toEqual(new Set(['Unhealthy']));
    health.set(true);
    expect(new Set((await w.next()).map((d) => d.health))).toEqual(new Set(['Healthy']));
    w.close();
  });

  it("Allocate mounts the slot's host directory (created) at /var/run/kubevirt-spdk/", async () => {
    await startPlugin();
    await kubelet.waitForRegistration(1);
    const res = await kubelet.allocate([['slot-02']]);
    expect(res.container_responses).toHaveLength(1);
    expect(res.container_responses[0]?.mounts).toEqual([{ container_path: '/var/run/kubevirt-spdk', host_path: path.join(vhostDir, 'slot-02'), read_only: false }]);
    expect((await stat(path.join(vhostDir, 'slot-02'))).isDirectory()).toBe(true);
  });

  it('Allocate refuses anything but exactly one known slot per container, naming it', async () => {
    await startPlugin();
    await kubelet.waitForRegistration(1);
    const two = await kubelet.allocate([['slot-00', 'slot-01']]).catch((e: unknown) => e);
    expect(grpcCode(two)).toBe(grpc.status.INVALID_ARGUMENT);
    expect((two as Error).message).toContain('container_requests[0]: each container must request exactly one kubevirt-spdk.io/vhost-slot, got 2 (slot-00, slot-01)');
    const unknown = await kubelet.allocate([['slot-09']]).catch((e: unknown) => e);
    expect((unknown as Error).message).toContain('unknown device "slot-09"');
  });

  it('PreStartContainer holds the container until the agent reports the slot ready', async () => {
    await startPlugin();
    await kubelet.waitForRegistration(1);
    await kubelet.allocate([['slot-01']]);
    const gate = kubelet.preStart(['slot-01']);
    expect(await stillPending(gate)).toBe(true);
    await report('slot-01', false, [{ name: 'rootdisk', phase: 'Provisioning' }]);
    expect(await stillPending(gate)).toBe(true);
    await report('slot-01', true, [{ name: 'rootdisk', phase: 'Ready' }]);
    await expect(gate).resolves.toBeUndefined();
  });

  it('PreStartContainer times out with the slot and the disks not ready', async () => {
    await startPlugin(400);
    await kubelet.waitForRegistration(1);
    await kubelet.allocate([['slot-03']]);
    await report('slot-03', false, [
      { name: 'rootdisk', phase: 'Importing', message: 'downloading fedora-40' },
      { name: 'data', phase: 'Ready' },
    ]);
    const err = await kubelet.preStart(['slot-03']).catch((e: unknown) => e);
    expect(grpcCode(err)).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect((err as Error).message).toMatch(/slot-03 is not ready after [0-9.]+s: disks not ready for VMI default\/vm1: rootdisk \(Importing: downloading fedora-40\)$/);
  });

  it("a ready report older than the allocation (the slot's previous VMI) does not open the gate", async () => {
    await startPlugin(400);
    await kubelet.waitForRegistration(1);
    const file = await report('slot-00', true);
    const old = new Date(Date.now() - 60_000);
    await utimes(file, old, old);
    await kubelet.allocate([['slot-00']]);
    const err = await kubelet.preStart(['slot-00']).catch((e: unknown) => e);
    expect((err as Error).message).toContain('predates this allocation');
  });

  it('re-serves and re-registers when kubelet restarts and wipes its directory', async () => {
    await startPlugin();
    await kubelet.waitForRegistration(1);
    await kubelet.restart();
    const reg = await kubelet.waitForRegistration(2);
    expect(reg.resource_name).toBe('kubevirt-spdk.io/vhost-slot');
    expect((await stat(plugin.socketPath)).isSocket()).toBe(true);
    const w = kubelet.watch();
    expect(await w.next()).toHaveLength(4);
    w.close();
    expect((await kubelet.allocate([['slot-01']])).container_responses).toHaveLength(1);
  });

  it('registers once kubelet comes up after the plugin', async () => {
    await kubelet.stop();
    await startPlugin();
    expect(kubelet.registrations).toHaveLength(0);
    kubelet = await FakeKubelet.start(path.join(root, 'dp'));
    expect((await kubelet.waitForRegistration(1)).endpoint).toBe('kubevirt-spdk-vhost.sock');
  });
});
