import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { cliArgv } from '../helpers/cli.js';
import { writeSelfSignedCert } from '../../webhooks/selfsigned.js';

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

describe('kubevirt-spdk webhook (CLI)', () => {
  it('serves /readyz and exits 0 on SIGTERM', async () => {
    const { command, args } = cliArgv(
      'webhook', '--tls-cert', path.join(dir, 'tls.crt'), '--tls-key', path.join(dir, 'tls.key'),
      '--images', path.join(dir, 'images.yaml'), '--sidecar-image', 'example.org/kubevirt-spdk:t', '--host', '127.0.0.1', '--port', '0', '--metrics-host', '127.0.0.1', '--metrics-port', '0',
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
});
