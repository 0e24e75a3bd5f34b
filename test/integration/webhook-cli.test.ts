import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { cliArgv } from '../helpers/cli.js';
import { writeSelfSignedCert } from '../../webhooks/selfsigned.js';
import { admissionReview, postJson } from '../helpers/webhook.js';

let dir: string;
let child: ChildProcess | undefined;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'whc-'));
  await writeSelfSignedCert(path.join(dir, 'tls.crt'), path.join(dir, 'tls.key'));
  await writeFile(path.join(dir, 'images.yaml'), 'apiVersion: kubevirt-spdk.io/v1alpha1\nkind: CachedImage\nmetadata: {name: img}\nspec: {source: {hostPath: {path: /i.raw}}}\n');
});

afterAll(async () => {
  child?.kill('SIGKILL');
  await rm(dir, { recursive: true, force: true });
});

/** Starts the webhook CLI (with `more` options) on a free loopback port; resolves with the process, its port and its log lines. */
async function startWebhookProcess(...more: string[]): Promise<{ proc: ChildProcess; port: number; logs: string[] }> {
  const { command, args } = cliArgv(
    'webhook', '--tls-cert', path.join(dir, 'tls.crt'), '--tls-key', path.join(dir, 'tls.key'),
    '--images', path.join(dir, 'images.yaml'), '--sidecar-image', 'example.org/kubevirt-spdk:t', '--host', '127.0.0.1', '--port', '0', ...more,
  );
  const proc = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  child = proc;
  const logs: string[] = [];
  const port = await new Promise<number>((resolve, reject) => {
    createInterface({ input: proc.stderr as NodeJS.ReadableStream }).on('line', (l) => {
      logs.push(l);
      const m = /"port":(\d+)/.exec(l);
      if (m) resolve(Number(m[1]));
    });
    proc.once('exit', (code) => reject(new Error(`exited with ${code}: ${logs.join('\n')}`)));
  });
  return { proc, port, logs };
}

describe('kubevirt-spdk webhook (CLI)', () => {
  it('refuses deeply nested annotations with a field-named error and keeps serving (F3)', async () => {
    const { proc, port } = await startWebhookProcess();
    const ca = await readFile(path.join(dir, 'tls.crt'), 'utf8');
    let exitCode: number | null | undefined;
    proc.once('exit', (code) => (exitCode = code));
    // The reported input (about 2,000 nested "[" in 4 KB) aborted the process in two requests.
    const inputs = ['[ '.repeat(2000), '['.repeat(2000), '['.repeat(30_000), '- '.repeat(16_000), '{a: '.repeat(8000), '[!x '.repeat(8000)];
    for (const [i, text] of inputs.entries()) {
      for (let round = 0; round < 2; round++) {
        const vmi = { metadata: { name: 'deep', namespace: 'default', annotations: { 'kubevirt-spdk.io/volumes': text } }, spec: {} };
        const res = await postJson(port, '/mutate', JSON.stringify(admissionReview(vmi, `uid-${i}-${round}`)), ca);
        expect(res.status, res.text).toBe(200);
        const response = (JSON.parse(res.text) as { response: { allowed: boolean; status?: { message?: string } } }).response;
        expect(response.allowed).toBe(false);
        expect(response.status?.message).toMatch(/^volumes: (YAML nests deeper than 16 levels|must be at most 32768 characters)/);
      }
    }
    const ready = await postJson(port, '/mutate', JSON.stringify(admissionReview({ metadata: { name: 'ok', namespace: 'default' }, spec: {} }, 'uid-ok')), ca);
    expect(ready.status).toBe(200);
    expect(exitCode).toBeUndefined();
    proc.kill('SIGTERM');
  }, 60_000);

  it('serves /readyz and exits 0 on SIGTERM', async () => {
    const { proc, port, logs } = await startWebhookProcess('--metrics-host', '127.0.0.1', '--metrics-port', '0');
    const ca = await readFile(path.join(dir, 'tls.crt'), 'utf8');
    const status = await new Promise<number>((resolve, reject) =>
      https.get({ host: '127.0.0.1', port, path: '/readyz', ca, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on('error', reject),
    );
    expect(status).toBe(200);
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(logs.some((l) => l.includes('"msg":"webhook stopped"'))).toBe(true);
  });

  it('names missing options and exits 2', async () => {
    const { command, args } = cliArgv('webhook', '--tls-cert', 'x');
    const proc = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    proc.stderr?.on('data', (c: Buffer) => (err += c.toString()));
    const code = await new Promise<number | null>((resolve) => proc.once('exit', resolve));
    expect(code).toBe(2);
    expect(err).toContain('--tls-key: is required');
    expect(err).toContain('--sidecar-image: is required');
  });

  it('refuses a cache affinity weight outside 0..100, naming the flag, and exits 2', async () => {
    const { command, args } = cliArgv('webhook', '--tls-cert', 'x', '--tls-key', 'y', '--sidecar-image', 'i', '--cache-affinity-weight', '101');
    const proc = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    proc.stderr?.on('data', (c: Buffer) => (err += c.toString()));
    const code = await new Promise<number | null>((resolve) => proc.once('exit', resolve));
    expect(code).toBe(2);
    expect(err).toMatch(/--cache-affinity-weight: 101 must be an integer in 0\.\.100/);
  });
});
