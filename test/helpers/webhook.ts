/** Shared fixtures of the webhook tests: the image catalog, AdmissionReviews, and HTTPS posts. */
import { EventEmitter } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { parseCachedImages } from '../../src/api/cachedimage.js';
import { StaticImageCatalog, type CachedImageSource } from '../../webhooks/catalog.js';
import { writeSelfSignedCert } from '../../webhooks/selfsigned.js';
import { WebhookServer, type WebhookServerOptions } from '../../webhooks/server.js';

/** `fedora-40` (4Gi, so a smaller capacity is refused) and `unsized` (size found on import). */
export const testCatalog = (): StaticImageCatalog =>
  new StaticImageCatalog(
    parseCachedImages(`
apiVersion: kubevirt-spdk.io/v1alpha1
kind: CachedImage
metadata: {name: fedora-40}
spec: {source: {hostPath: {path: /images/fedora.raw}}, size: 4Gi}
---
apiVersion: kubevirt-spdk.io/v1alpha1
kind: CachedImage
metadata: {name: unsized}
spec: {source: {hostPath: {path: /images/unsized.raw}}}
`),
  );

/** An AdmissionReview of a CREATE of `object` (a VMI) in namespace default. */
export function admissionReview(object: unknown, uid = 'uid-1') {
  return {
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid,
      kind: { group: 'kubevirt.io', version: 'v1', kind: 'VirtualMachineInstance' },
      resource: { group: 'kubevirt.io', version: 'v1', resource: 'virtualmachineinstances' },
      operation: 'CREATE',
      namespace: 'default',
      object,
    },
  };
}

/** POSTs a JSON body to the webhook on loopback, trusting `ca`; resolves with status and body. */
export function postJson(port: number, urlPath: string, body: string | Buffer, ca: string, agent?: https.Agent): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port, path: urlPath, method: 'POST', ca, ...(agent ? { agent } : {}), headers: { 'content-type': 'application/json' }, timeout: 5000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

export interface TestWebhook {
  server: WebhookServer;
  /** The self-signed certificate, to trust in clients. */
  ca: string;
  /** Holds `tls.crt` and `tls.key` (tests rotate them in place). */
  dir: string;
  /** Stops the server and removes its certificate directory. */
  close(): Promise<void>;
}

/** The webhook over HTTPS on a free loopback port with a fresh self-signed certificate. */
export async function startTestWebhook(opts: Partial<WebhookServerOptions> = {}): Promise<TestWebhook> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'wh-'));
  try {
    await writeSelfSignedCert(path.join(dir, 'tls.crt'), path.join(dir, 'tls.key'));
    const ca = await readFile(path.join(dir, 'tls.crt'), 'utf8');
    const server = await WebhookServer.start({
      certFile: path.join(dir, 'tls.crt'),
      keyFile: path.join(dir, 'tls.key'),
      host: '127.0.0.1',
      port: 0,
      catalog: testCatalog(),
      config: { sidecarImage: 'example.org/kubevirt-spdk:test' },
      ...opts,
    });
    return {
      server,
      ca,
      dir,
      close: async () => {
        await server.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}

/** The CachedImages an informer would hold, set by the test; `synced` flips on `sync()`. */
export class FakeCachedImageSource extends EventEmitter implements CachedImageSource {
  synced = false;
  private readonly objects = new Map<string, unknown>();

  put(obj: { metadata: { name: string } }): void {
    this.objects.set(obj.metadata.name, obj);
    this.emit('change');
  }
  remove(name: string): void {
    this.objects.delete(name);
    this.emit('change');
  }
  sync(): void {
    this.synced = true;
  }
  list(): readonly unknown[] {
    return [...this.objects.values()];
  }
  start(): Promise<void> {
    return Promise.resolve();
  }
  stop(): Promise<void> {
    return Promise.resolve();
  }
}
