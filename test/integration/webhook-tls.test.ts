import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasCommand } from '../helpers/process.js';
import { startTestWebhook, type TestWebhook } from '../helpers/webhook.js';

/**
 * The webhook's TLS as a real client sees it, with an RSA certificate (so that RSA key
 * exchange is possible at all) put in place by a certificate reload: a client that offers
 * only RSA key exchange, CBC with SHA-1 or SHA-256, or TLS 1.1 gets no session; ECDHE with
 * AEAD on TLS 1.2, and TLS 1.3, do.
 */
let wh: TestWebhook;
let ca: string;
beforeAll(async () => {
  wh = await startTestWebhook({ shutdownGraceMs: 200 });
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(wh.dir, 'tls.key'), '-out', path.join(wh.dir, 'tls.crt'), '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
  expect(await wh.server.reloadTls()).toBe(true);
  ca = await readFile(path.join(wh.dir, 'tls.crt'), 'utf8');
});
afterAll(async () => {
  await wh?.close();
});

function handshake(o: tls.ConnectionOptions): Promise<{ ok: true; cipher: string; version: string } | { ok: false; error: string }> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port: wh.server.port, ca, servername: 'localhost', ...o }, () => {
      resolve({ ok: true, cipher: s.getCipher().name, version: s.getProtocol() ?? '' });
      s.end();
    });
    s.on('error', (e) => resolve({ ok: false, error: e.message }));
  });
}

describe.skipIf(!hasCommand('openssl'))('webhook TLS policy (RSA certificate, real TLS client)', () => {
  it.each([
    ['RSA key exchange with AEAD', 'AES128-GCM-SHA256:AES256-GCM-SHA384'],
    ['RSA key exchange with CBC-SHA1', 'AES128-SHA:AES256-SHA'],
    ['ECDHE with CBC-SHA1', 'ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA'],
    ['ECDHE with CBC-SHA256', 'ECDHE-RSA-AES128-SHA256'],
  ])('refuses a TLS 1.2 client offering only %s', async (_what, ciphers) => {
    const r = await handshake({ maxVersion: 'TLSv1.2', ciphers });
    expect(r).toMatchObject({ ok: false });
  });

  it('refuses TLS 1.1', async () => {
    expect(await handshake({ minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' })).toMatchObject({ ok: false });
  });

  it('accepts ECDHE+AEAD on TLS 1.2, and TLS 1.3', async () => {
    expect(await handshake({ maxVersion: 'TLSv1.2', ciphers: 'ECDHE-RSA-AES128-GCM-SHA256' })).toEqual({ ok: true, cipher: 'ECDHE-RSA-AES128-GCM-SHA256', version: 'TLSv1.2' });
    expect(await handshake({ maxVersion: 'TLSv1.2', ciphers: 'ECDHE-RSA-CHACHA20-POLY1305' })).toEqual({ ok: true, cipher: 'ECDHE-RSA-CHACHA20-POLY1305', version: 'TLSv1.2' });
    // A client offering everything gets ECDHE+AEAD on TLS 1.2 too (the server's order wins).
    expect(await handshake({ maxVersion: 'TLSv1.2', ciphers: 'AES128-SHA:AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-GCM-SHA384' })).toMatchObject({ ok: true, cipher: 'ECDHE-RSA-AES256-GCM-SHA384' });
    expect(await handshake({})).toMatchObject({ ok: true, version: 'TLSv1.3' });
  });
});
