/**
 * /metrics scraped over real HTTP(S) while the components do real work: every counter that
 * an operator alerts on must move with the event it counts.
 */
import http from 'node:http';
import https from 'node:https';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { ManualHealth } from '../../deviceplugin/health.js';
import { DevicePluginServer } from '../../deviceplugin/server.js';
import { createMetrics, recordMigration, type Metrics } from '../../src/metrics/metrics.js';
import { startStatusServer, type StatusServer } from '../../src/metrics/server.js';
import { SpdkSimulator } from '../../testing/spdk-sim/index.js';
import { SpdkRpcClient } from '../../src/spdk/client.js';
import { VOLUMES_ANNOTATION } from '../../src/api/volumes.js';
import { FakeKubelet } from '../helpers/fake-kubelet.js';
import { admissionReview, postJson, startTestWebhook } from '../helpers/webhook.js';
import { desiredOf, harness, image, vmi, type Harness } from '../unit/agent/fixtures.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function fetchText(url: string, ca?: string): Promise<{ status: number; type: string; body: string }> {
  const get = url.startsWith('https:') ? https.get : http.get;
  return new Promise((resolve, reject) => {
    get(url, { ...(ca ? { ca } : {}), timeout: 5000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body: Buffer.concat(chunks).toString('utf8') }));
    }).on('error', reject);
  });
}

/** The value of one sample in Prometheus text format, or undefined when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return undefined;
}

async function serve(metrics: Metrics): Promise<() => Promise<string>> {
  const server: StatusServer = await startStatusServer({ port: 0, host: '127.0.0.1', registry: metrics.registry });
  cleanups.push(() => server.close());
  return async () => {
    const r = await fetchText(`http://127.0.0.1:${server.port}/metrics`);
    expect(r.status).toBe(200);
    expect(r.type).toContain('text/plain');
    return r.body;
  };
}

describe('/metrics', () => {
  it('counts an SPDK RPC error by method and kind, and times every call', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mt-'));
    await mkdir(path.join(dir, 'vhost'));
    const sim = new SpdkSimulator({ socketPath: path.join(dir, 'rpc.sock'), vhostDir: path.join(dir, 'vhost') });
    await sim.start();
    const metrics = createMetrics(new Registry());
    const client = new SpdkRpcClient({ socketPath: path.join(dir, 'rpc.sock'), metrics, reconnect: false, timeoutMs: 5000 });
    cleanups.push(async () => {
      await client.close();
      await sim.stop();
      await rm(dir, { recursive: true, force: true });
    });
    const scrape = await serve(metrics);

    await client.call('bdev_get_bdevs');
    expect(sample(await scrape(), 'kubevirt_spdk_spdk_rpc_errors_total', { method: 'bdev_get_bdevs' })).toBeUndefined();
    await expect(client.call('bdev_get_bdevs', { name: 'no-such-bdev' })).rejects.toMatchObject({ kind: 'notFound' });
    await expect(client.call('no_such_method')).rejects.toMatchObject({ kind: 'methodNotFound' });

    const text = await scrape();
    expect(sample(text, 'kubevirt_spdk_spdk_rpc_errors_total', { method: 'bdev_get_bdevs', kind: 'notFound' })).toBe(1);
    expect(sample(text, 'kubevirt_spdk_spdk_rpc_errors_total', { method: 'no_such_method', kind: 'methodNotFound' })).toBe(1);
    expect(sample(text, 'kubevirt_spdk_spdk_rpc_duration_seconds_count', { method: 'bdev_get_bdevs' })).toBe(2);
  });

  it('a provisioned disk moves the provisioning histogram, the phase gauge and the cache counters', async () => {
    const metrics = createMetrics(new Registry());
    const h: Harness = await harness({ metrics });
    cleanups.push(() => h.cleanup());
    const scrape = await serve(metrics);

    h.agent.setDesired(desiredOf([vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }])], [image('fedora')]));
    await h.agent.converge('test');
    let text = await scrape();
    expect(sample(text, 'kubevirt_spdk_disk_provision_duration_seconds_count', { source: 'image' })).toBe(1);
    expect(sample(text, 'kubevirt_spdk_disks', { phase: 'Ready' })).toBe(1);
    expect(sample(text, 'kubevirt_spdk_disks', { phase: 'Failed' })).toBe(0);
    expect(sample(text, 'kubevirt_spdk_image_cache_misses_total')).toBe(1);
    expect(sample(text, 'kubevirt_spdk_image_cache_hits_total')).toBe(0);
    expect(sample(text, 'kubevirt_spdk_image_import_duration_seconds_count', { outcome: 'ok' })).toBe(1);
    expect(sample(text, 'kubevirt_spdk_backend_up')).toBe(1);

    // A second VMI from the same image: a hit, no new import.
    h.agent.setDesired(desiredOf([vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }]), vmi('b', 'slot-02', [{ name: 'root', image: 'fedora' }])], [image('fedora')]));
    await h.agent.converge('test');
    text = await scrape();
    expect(sample(text, 'kubevirt_spdk_disks', { phase: 'Ready' })).toBe(2);
    expect(sample(text, 'kubevirt_spdk_image_cache_hits_total')).toBe(1);
    expect(sample(text, 'kubevirt_spdk_image_import_duration_seconds_count', { outcome: 'ok' })).toBe(1);
    expect(sample(text, 'kubevirt_spdk_disk_provision_duration_seconds_count', { source: 'image' })).toBe(2);
    expect(sample(text, 'kubevirt_spdk_image_cache_images')).toBe(1);
    // No VMI name or uid ever becomes a label.
    expect(text).not.toMatch(/uid-a|namespace="/);
  });

  it('a backend restart counts one recovery with its duration and re-created controllers', async () => {
    const metrics = createMetrics(new Registry());
    const h: Harness = await harness({ metrics });
    cleanups.push(async () => {
      await h.agent.stop();
      await h.cleanup();
    });
    const scrape = await serve(metrics);
    h.agent.setDesired(desiredOf([vmi('a', 'slot-01', [{ name: 'root', image: 'fedora' }]), vmi('b', 'slot-02', [{ name: 'root', image: 'fedora' }])], [image('fedora')]));
    await h.agent.converge('test');
    expect(sample(await scrape(), 'kubevirt_spdk_recoveries_total', { converged: 'true' })).toBeUndefined();
    h.agent.start();
    const recovered = new Promise((resolve) => h.agent.once('recovery', resolve));
    await h.backend.restart();
    await recovered;
    const text = await scrape();
    expect(sample(text, 'kubevirt_spdk_recoveries_total', { converged: 'true' })).toBe(1);
    expect(sample(text, 'kubevirt_spdk_recovery_duration_seconds_count')).toBe(1);
    expect(sample(text, 'kubevirt_spdk_recovered_controllers_total')).toBe(2);
  });

  it('migrations are counted by outcome through recordMigration', async () => {
    const metrics = createMetrics(new Registry());
    const scrape = await serve(metrics);
    recordMigration('succeeded', metrics);
    recordMigration('succeeded', metrics);
    recordMigration('aborted', metrics);
    const text = await scrape();
    expect(sample(text, 'kubevirt_spdk_migrations_total', { outcome: 'succeeded' })).toBe(2);
    expect(sample(text, 'kubevirt_spdk_migrations_total', { outcome: 'aborted' })).toBe(1);
  });

  it('the webhook serves /metrics on its own port, not on the admission port, and counts a rejection', async () => {
    const metrics = createMetrics(new Registry());
    const { server, ca, close } = await startTestWebhook({ shutdownGraceMs: 500, metrics, metricsPort: 0, metricsHost: '127.0.0.1' });
    cleanups.push(close);
    const admit = async (volumes: string): Promise<string> => {
      const vmi = { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', metadata: { name: 'vm', annotations: { [VOLUMES_ANNOTATION]: volumes } }, spec: { domain: { devices: {} } } };
      return (await postJson(server.port, '/mutate', JSON.stringify(admissionReview(vmi, 'u1')), ca)).text;
    };
    await admit('- {name: rootdisk, spdkVhostBlkDisk: {image: fedora-40, capacity: 20Gi}}');
    const denied = await admit('- {name: rootdisk, spdkVhostBlkDisk: {image: fedora-40, capacity: 1Gi}}');
    expect(denied).toContain('"allowed":false');
    // The admission port is reachable by anything in the cluster: no metrics there.
    expect((await fetchText(`https://127.0.0.1:${server.port}/metrics`, ca)).status).toBe(404);
    const r = await fetchText(`http://127.0.0.1:${server.metricsPort}/metrics`);
    expect(r.status).toBe(200);
    const rejected = Object.fromEntries(
      r.body
        .split('\n')
        .filter((l) => l.startsWith('kubevirt_spdk_webhook_rejections_total{'))
        .map((l): [string, number] => [l.split(' ')[0] ?? '', Number(l.split(' ')[1])]),
    );
    expect(Object.values(rejected).reduce((a, b) => a + b, 0)).toBe(1);
    expect(sample(r.body, 'kubevirt_spdk_webhook_admission_duration_seconds_count', { operation: 'CREATE', allowed: 'true' })).toBe(1);
    expect(sample(r.body, 'kubevirt_spdk_webhook_admission_duration_seconds_count', { operation: 'CREATE', allowed: 'false' })).toBe(1);
  });

  it('the device plugin reports its slots and counts an allocation', async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), 'md-'));
    await mkdir(path.join(root, 'dp'));
    const kubelet = await FakeKubelet.start(path.join(root, 'dp'));
    const health = new ManualHealth(true);
    const metrics = createMetrics(new Registry());
    const plugin = new DevicePluginServer({ pluginDir: path.join(root, 'dp'), slotCount: 4, vhostDir: path.join(root, 'vhost'), stateDir: path.join(root, 'state'), health, checkIntervalMs: 100, metrics });
    cleanups.push(async () => {
      await plugin.close();
      await kubelet.stop();
      health.close();
      await rm(root, { recursive: true, force: true });
    });
    await plugin.start();
    await kubelet.waitForRegistration(1);
    const scrape = await serve(metrics);
    let text = await scrape();
    expect(sample(text, 'kubevirt_spdk_vhost_slots')).toBe(4);
    expect(sample(text, 'kubevirt_spdk_vhost_slots_healthy')).toBe(4);
    expect(sample(text, 'kubevirt_spdk_vhost_slots_allocated')).toBe(0);
    await kubelet.allocate([['slot-01']]);
    text = await scrape();
    expect(sample(text, 'kubevirt_spdk_vhost_slot_allocations_total')).toBe(1);
    expect(sample(text, 'kubevirt_spdk_vhost_slots_allocated')).toBe(1);
    health.set(false); // change events are synchronous
    expect(sample(await scrape(), 'kubevirt_spdk_vhost_slots_healthy')).toBe(0);
  });
});
