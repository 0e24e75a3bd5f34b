/**
 * Webhook admissions over HTTPS on loopback at 1, 10 and 100 concurrent keep-alive clients.
 * The server runs in its own process (the CLI), as in a cluster; the baseline is the same
 * request body POSTed to /healthz on that server (TLS + HTTP, no admission work).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { cliArgv } from '../test/helpers/cli.js';
import { writeSelfSignedCert } from '../webhooks/selfsigned.js';
import { VOLUMES_ANNOTATION } from '../src/api/volumes.js';
import { fmt, percentile, type BenchSection } from './harness.js';

const LEVELS = [1, 10, 100];
const RUN_MS = Number(process.env.WEBHOOK_BENCH_MS ?? 2000);
const WARMUP_REQUESTS = 300;

const IMAGES = `apiVersion: kubevirt-spdk.io/v1alpha1
kind: CachedImage
metadata: {name: fedora-40}
spec: {source: {hostPath: {path: /images/fedora.raw}}, size: 4Gi}
`;

/** A VMI like a user would create: two SPDK disks, a container disk, cloud-init, a NIC. */
function reviewBody(variant = 0): string {
  const volumes = `- name: rootdisk
  spdkVhostBlkDisk: {image: fedora-40, capacity: ${20 + variant}Gi, bootOrder: 1, queues: 4}
- name: data
  spdkVhostBlkDisk: {blank: {}, capacity: 100Gi, reconnectInterval: 30s}
`;
  const object = {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'bench-vm', namespace: 'default', labels: { app: 'bench' }, annotations: { [VOLUMES_ANNOTATION]: volumes } },
    spec: {
      domain: {
        cpu: { cores: 4 },
        memory: { guest: '4Gi' },
        resources: { requests: { memory: '4Gi', cpu: '2' } },
        devices: { disks: [{ name: 'cloudinit', disk: { bus: 'virtio' } }], interfaces: [{ name: 'default', masquerade: {} }] },
      },
      networks: [{ name: 'default', pod: {} }],
      volumes: [{ name: 'cloudinit', cloudInitNoCloud: { userData: '#cloud-config\npassword: fedora\nchpasswd: { expire: False }\n' } }],
    },
  };
  return JSON.stringify({
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid: '705ab4f5-6393-11e8-b7cc-42010a800002',
      kind: { group: 'kubevirt.io', version: 'v1', kind: 'VirtualMachineInstance' },
      resource: { group: 'kubevirt.io', version: 'v1', resource: 'virtualmachineinstances' },
      operation: 'CREATE',
      namespace: 'default',
      userInfo: { username: 'admin', groups: ['system:authenticated'] },
      object,
    },
  });
}

async function startServer(dir: string): Promise<{ child: ChildProcess; port: number }> {
  const { command, args } = cliArgv(
    'webhook',
    '--tls-cert', path.join(dir, 'tls.crt'), '--tls-key', path.join(dir, 'tls.key'),
    '--images', path.join(dir, 'images.yaml'), '--sidecar-image', 'example.org/kubevirt-spdk:bench',
    '--host', '127.0.0.1', '--port', '0',
  );
  // At info level accepted admissions are not logged: the bench measures the webhook, not the log pipe.
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, LOG_LEVEL: 'info' } });
  const lines = createInterface({ input: child.stderr as NodeJS.ReadableStream });
  const port = await new Promise<number>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('webhook did not start within 20 s')), 20_000);
    lines.on('line', (l) => {
      const m = /"port":(\d+)/.exec(l);
      if (m) {
        clearTimeout(t);
        resolve(Number(m[1]));
      }
    });
    child.once('exit', (code) => reject(new Error(`webhook exited with ${code}`)));
  });
  return { child, port };
}

interface LevelResult {
  p50: number;
  p99: number;
  rps: number;
  errors: number;
}

async function load(port: number, ca: string, urlPath: string, bodies: readonly string[], concurrency: number): Promise<LevelResult> {
  let next = 0;
  const agent = new https.Agent({ keepAlive: true, maxSockets: concurrency });
  const one = (): Promise<number> =>
    new Promise((resolve, reject) => {
      const body = bodies[next++ % bodies.length] as string;
      const t0 = process.hrtime.bigint();
      const req = https.request(
        { host: '127.0.0.1', port, path: urlPath, method: 'POST', ca, agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
        (res) => {
          res.on('data', () => undefined);
          res.on('end', () => (res.statusCode === 200 ? resolve(Number(process.hrtime.bigint() - t0) / 1e6) : reject(new Error(`HTTP ${res.statusCode}`))));
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  for (let i = 0; i < WARMUP_REQUESTS; i += concurrency) await Promise.all(Array.from({ length: concurrency }, one));
  const latencies: number[] = [];
  let errors = 0;
  const start = Date.now();
  const worker = async (): Promise<void> => {
    while (Date.now() - start < RUN_MS) {
      try {
        latencies.push(await one());
      } catch {
        errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsed = (Date.now() - start) / 1000;
  agent.destroy();
  latencies.sort((a, b) => a - b);
  return { p50: percentile(latencies, 50), p99: percentile(latencies, 99), rps: latencies.length / elapsed, errors };
}

export async function section(): Promise<BenchSection> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'whb-'));
  await writeSelfSignedCert(path.join(dir, 'tls.crt'), path.join(dir, 'tls.key'));
  await writeFile(path.join(dir, 'images.yaml'), IMAGES);
  const ca = await readFile(path.join(dir, 'tls.crt'), 'utf8');
  const { child, port } = await startServer(dir);
  const template = [reviewBody()];
  // More distinct VMIs than the webhook's parse cache holds: every admission parses.
  const unique = Array.from({ length: 2000 }, (_, i) => reviewBody(i + 1));
  const rows: Array<Array<string | number>> = [];
  try {
    for (const c of LEVELS) {
      const base = await load(port, ca, '/healthz', template, c);
      for (const [label, bodies] of [['unique VMIs', unique], ['one template', template]] as const) {
        const adm = await load(port, ca, '/mutate', bodies, c);
        rows.push([c, label, fmt(adm.p50), fmt(adm.p99), fmt(adm.rps, 0), fmt(base.p50), fmt(base.p99), fmt(base.rps, 0), fmt(adm.rps / base.rps), adm.errors + base.errors]);
      }
    }
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    await rm(dir, { recursive: true, force: true });
  }
  return {
    area: 'Admission webhook',
    tables: [
      {
        title: 'Admissions over HTTPS on loopback (keep-alive clients)',
        columns: ['clients', 'VMIs', 'p50 ms', 'p99 ms', 'admissions/s', 'baseline p50 ms', 'baseline p99 ms', 'baseline req/s', 'throughput vs baseline', 'errors'],
        rows,
        notes: [
          `Each level: ${WARMUP_REQUESTS} warm-up requests, then ${RUN_MS / 1000} s of closed-loop load; request body ${Buffer.byteLength(template[0] as string)} bytes (a VMI with two SPDK disks, accepted with a patch).`,
          '"unique VMIs": 2,000 distinct annotations in rotation (every admission parses the YAML); "one template": identical annotations, as VMs of a pool send (parse cache hits).',
          'The webhook runs in its own process (the CLI); the clients share the remaining core of a 2-core machine.',
          'Baseline: the same POST to /healthz on the same server (TLS + HTTP parsing, no admission work); the ratio is admissions/s over baseline req/s.',
          'Targets: p99 < 5 ms at 10 clients, > 2,000 admissions/s.',
        ],
      },
    ],
  };
}
