import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFile, rename } from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import jsonpatch, { type Operation } from 'fast-json-patch';
import type { WebhookServer } from '../../webhooks/server.js';
import { writeSelfSignedCert } from '../../webhooks/selfsigned.js';
import { VOLUMES_ANNOTATION, VHOST_SLOT_RESOURCE } from '../../src/api/volumes.js';
import type { AdmissionReviewResponse } from '../../webhooks/admission-review.js';
import { admissionReview, postJson, startTestWebhook, type TestWebhook } from '../helpers/webhook.js';

let dir: string;
let server: WebhookServer;
let ca: string;
const agent = new https.Agent({ keepAlive: true });

const post = (urlPath: string, body: string | Buffer) => postJson(server.port, urlPath, body, ca, agent);

function get(urlPath: string): Promise<number> {
  return new Promise((resolve, reject) => {
    https.get({ host: '127.0.0.1', port: server.port, path: urlPath, ca, agent, timeout: 5000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    }).on('error', reject);
  });
}

async function admit(object: unknown): Promise<AdmissionReviewResponse['response']> {
  const res = await post('/mutate', JSON.stringify(admissionReview(object)));
  expect(res.status).toBe(200);
  const out = JSON.parse(res.text) as AdmissionReviewResponse;
  expect(out).toMatchObject({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response: { uid: 'uid-1' } });
  return out.response;
}

function vmi(volumes?: string) {
  return { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', metadata: { generateName: 'vm-', annotations: volumes === undefined ? {} : { [VOLUMES_ANNOTATION]: volumes } }, spec: { domain: { devices: {} } } };
}

async function peerFingerprint(): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: server.port, rejectUnauthorized: false }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.on('error', reject);
  });
}

let webhook: TestWebhook;

beforeAll(async () => {
  webhook = await startTestWebhook({ shutdownGraceMs: 1000 });
  ({ server, ca, dir } = webhook);
});

afterAll(async () => {
  agent.destroy();
  await webhook?.close();
});

describe('webhook over HTTPS', () => {
  it('accepts a VMI with a patch that, applied, re-validates and needs no second patch', async () => {
    const obj = vmi('- {name: rootdisk, spdkVhostBlkDisk: {image: fedora-40, capacity: 20Gi}}');
    const res = await admit(obj);
    expect(res.allowed).toBe(true);
    expect(res.patchType).toBe('JSONPatch');
    const ops = JSON.parse(Buffer.from(res.patch ?? '', 'base64').toString('utf8')) as Operation[];
    const patched = jsonpatch.applyPatch(structuredClone(obj), ops, true, false).newDocument as ReturnType<typeof vmi> & { spec: { domain: { resources?: { limits?: Record<string, string> } } } };
    expect(patched.spec.domain.resources?.limits?.[VHOST_SLOT_RESOURCE]).toBe('1');
    const again = await admit(patched);
    expect(again).toEqual({ uid: 'uid-1', allowed: true });
  });

  it('rejects a bad VMI with HTTP 200, allowed: false and a message naming the field', async () => {
    const res = await admit(vmi('- {name: rootdisk, spdkVhostBlkDisk: {image: fedora-40, capacity: 1Gi}}'));
    expect(res.allowed).toBe(false);
    expect(res.status?.code).toBe(422);
    expect(res.status?.message).toBe('volumes[0].spdkVhostBlkDisk.capacity: 1Gi is smaller than image fedora-40 (4Gi)');
  });

  it('passes a VMI without our annotation untouched', async () => {
    expect(await admit(vmi())).toEqual({ uid: 'uid-1', allowed: true });
  });

  it('answers 400 to what is not an AdmissionReview, 413 to a body over 1 MiB, 404 elsewhere', async () => {
    expect((await post('/mutate', '{"kind":')).status).toBe(400);
    const notReview = await post('/mutate', JSON.stringify({ apiVersion: 'v1', kind: 'Pod' }));
    expect(notReview.status).toBe(400);
    expect(notReview.text).toContain('apiVersion');
    const big = Buffer.alloc(1024 * 1024 + 1, 0x20);
    expect((await post('/mutate', big)).status).toBe(413);
    expect((await post('/nope', '{}')).status).toBe(404);
    // The server still works after refusing a big body.
    expect((await admit(vmi())).allowed).toBe(true);
  });

  it('serves /healthz and /readyz', async () => {
    expect(await get('/healthz')).toBe(200);
    expect(await get('/readyz')).toBe(200);
  });

  it('reloads the certificate when the mounted files change', async () => {
    const before = await peerFingerprint();
    // Write the new pair next to the old one and rename, as a Secret volume update does.
    await writeSelfSignedCert(path.join(dir, 'new.crt'), path.join(dir, 'new.key'), 'rotated');
    await rename(path.join(dir, 'new.key'), path.join(dir, 'tls.key'));
    await rename(path.join(dir, 'new.crt'), path.join(dir, 'tls.crt'));
    let after = before;
    for (let i = 0; i < 50 && after === before; i++) {
      await new Promise((r) => setTimeout(r, 100));
      after = await peerFingerprint();
    }
    expect(after).not.toBe(before);
    // A half-written pair is ignored; the current certificate stays in service.
    await writeFile(path.join(dir, 'tls.key'), 'garbage');
    expect(await server.reloadTls()).toBe(false);
    expect(await peerFingerprint()).toBe(after);
  });
});
