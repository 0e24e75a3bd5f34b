import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSidecar, type Sidecar } from '../../../src/sidecar/server.js';
import { CALLBACK_VERSIONS } from '../../../src/sidecar/protos.js';
import { hookClient, rejection, type HookClient } from './hook-client.js';
import { expectValidDomain, haveVirtXmlValidate } from '../converter/virt-xml-validate.js';

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../fixtures/converter');
const DOMAIN = readFileSync(path.join(FIXTURES, 'kubevirt-q35.xml'));
const GOLDEN = readFileSync(path.join(FIXTURES, 'golden/kubevirt-q35.xml'), 'utf8');
const VMI = parseYaml(readFileSync(path.join(FIXTURES, 'vmi-fedora.yaml'), 'utf8')) as {
  metadata: { annotations: Record<string, string> };
};

const vmiJson = (vmi: unknown): Buffer => Buffer.from(JSON.stringify(vmi));
const asResult = (res: unknown): { domainXML: Buffer } => res as { domainXML: Buffer };

describe('hook sidecar over a unix socket', () => {
  let dir: string;
  let sidecar: Sidecar;
  let client: HookClient;
  let shutdownRequests = 0;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'hk-'));
    sidecar = await startSidecar({ hooksDir: dir, onShutdownRequest: () => shutdownRequests++ });
    client = hookClient(sidecar.socketPath);
  });

  afterAll(async () => {
    client?.close();
    await sidecar?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('listens on a uniquely named socket in the hooks directory', async () => {
    expect(path.dirname(sidecar.socketPath)).toBe(dir);
    expect(path.basename(sidecar.socketPath)).toMatch(/^kubevirt-spdk-[0-9a-f]{8}\.sock$/);
    expect((await stat(sidecar.socketPath)).isSocket()).toBe(true);
    const other = await startSidecar({ hooksDir: dir });
    try {
      expect(other.socketPath).not.toBe(sidecar.socketPath);
    } finally {
      await other.close();
    }
  });

  it('Info advertises OnDefineDomain, Shutdown and the Callbacks versions v1alpha1..3', async () => {
    expect(await client.info()).toEqual({
      name: 'kubevirt-spdk',
      hookPoints: [
        { name: 'OnDefineDomain', priority: 0 },
        { name: 'Shutdown', priority: 0 },
      ],
      versions: ['v1alpha1', 'v1alpha2', 'v1alpha3'],
    });
  });

  for (const version of CALLBACK_VERSIONS) {
    it(`${version} OnDefineDomain returns the converted domain`, async () => {
      const res = asResult(await client.call(version, 'OnDefineDomain', { domainXML: DOMAIN, vmi: vmiJson(VMI) }));
      expect(res.domainXML.toString('utf8')).toBe(GOLDEN);
    });
  }

  it.skipIf(!haveVirtXmlValidate)('its answer passes virt-xml-validate (needs libvirt-clients + xmllint)', async () => {
    const res = asResult(await client.call('v1alpha3', 'OnDefineDomain', { domainXML: DOMAIN, vmi: vmiJson(VMI) }));
    await expectValidDomain(res.domainXML.toString('utf8'));
  });

  it('is idempotent across the two calls of a q35 boot', async () => {
    const first = asResult(await client.call('v1alpha2', 'OnDefineDomain', { domainXML: DOMAIN, vmi: vmiJson(VMI) }));
    const second = asResult(await client.call('v1alpha2', 'OnDefineDomain', { domainXML: first.domainXML, vmi: vmiJson(VMI) }));
    expect(second.domainXML.toString('utf8')).toBe(first.domainXML.toString('utf8'));
  });

  it('returns the domain byte for byte for a VMI without our annotation', async () => {
    const plain = { ...VMI, metadata: { ...VMI.metadata, annotations: {} } };
    const res = asResult(await client.call('v1alpha1', 'OnDefineDomain', { domainXML: DOMAIN, vmi: vmiJson(plain) }));
    expect(Buffer.compare(res.domainXML, DOMAIN)).toBe(0);
  });

  it('answers INVALID_ARGUMENT for a VMI payload that is not JSON', async () => {
    const err = await rejection(client.call('v1alpha3', 'OnDefineDomain', { domainXML: DOMAIN, vmi: Buffer.from('{"metadata": ') }));
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/^vmi: not valid JSON: /);
  });

  it('answers INVALID_ARGUMENT for a VMI that breaks the schema, naming the field', async () => {
    const err = await rejection(client.call('v1alpha3', 'OnDefineDomain', { domainXML: DOMAIN, vmi: vmiJson({ metadata: {} }) }));
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toBe('vmi.metadata.name: is required');
  });

  it('answers INVALID_ARGUMENT with the rule for a bad annotation', async () => {
    const bad = { ...VMI, metadata: { ...VMI.metadata, annotations: { 'kubevirt-spdk.io/volumes': '- name: rootdisk\n  spdkVhostBlkDisk: {bdev: b0, queues: 0}\n' } } };
    const err = await rejection(client.call('v1alpha3', 'OnDefineDomain', { domainXML: DOMAIN, vmi: vmiJson(bad) }));
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toBe('metadata.annotations["kubevirt-spdk.io/volumes"][0].spdkVhostBlkDisk.queues: must be >= 1');
  });

  it('answers INVALID_ARGUMENT for a malformed domain', async () => {
    const err = await rejection(client.call('v1alpha3', 'OnDefineDomain', { domainXML: Buffer.from('<domain><devices></domain>'), vmi: vmiJson(VMI) }));
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toContain('domain XML: not well-formed XML at line 1, column 27: unexpected close tag.');
  });

  it('passes cloud-init through PreCloudInitIso unchanged', async () => {
    const req = { cloudInitNoCloudSource: Buffer.from('{"userData":"x"}'), vmi: vmiJson(VMI), cloudInitData: Buffer.from('{"a":1}') };
    const res = (await client.call('v1alpha2', 'PreCloudInitIso', req)) as { cloudInitNoCloudSource: Buffer; cloudInitData: Buffer };
    expect(res.cloudInitNoCloudSource.toString()).toBe('{"userData":"x"}');
    expect(res.cloudInitData.toString()).toBe('{"a":1}');
  });

  it('v1alpha3 Shutdown is acknowledged and reported to the owner', async () => {
    expect(await client.call('v1alpha3', 'Shutdown', {})).toEqual({});
    expect(shutdownRequests).toBe(1);
  });

  it('close() removes its socket', async () => {
    const d = await mkdtemp(path.join(os.tmpdir(), 'hk-'));
    try {
      const s = await startSidecar({ hooksDir: d, socketName: 'x.sock', versions: ['v1alpha2'] });
      const c = hookClient(s.socketPath);
      // v1alpha2 has no Shutdown: listing the hook point there would be a promise we cannot keep.
      expect(await c.info()).toEqual({ name: 'kubevirt-spdk', hookPoints: [{ name: 'OnDefineDomain', priority: 0 }], versions: ['v1alpha2'] });
      c.close();
      await s.close();
      expect(await readdir(d)).toEqual([]);
    } finally {
      await rm(d, { recursive: true, force: true });
    }
  });
});
