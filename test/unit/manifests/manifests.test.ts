import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { Ajv } from 'ajv';
import { REPO_ROOT } from '../../helpers/cli.js';
import { CachedImageSchema } from '../../../src/api/cachedimage.js';
import { parseVmi, spdkVolumesOf } from '../../../src/api/vmi.js';

/**
 * `kubectl apply -k manifests/` has no API server here, so every object the kustomization
 * lists is checked against the Kubernetes OpenAPI schemas (kubernetes-models) and our CRDs'
 * own schemas, and the pieces that must agree (names, ports, secrets) are cross-checked.
 */
const MANIFESTS = path.join(REPO_ROOT, 'manifests');
type Obj = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string }; spec?: unknown; [k: string]: unknown };

async function loadDocs(file: string): Promise<Obj[]> {
  const text = await readFile(path.join(MANIFESTS, file), 'utf8');
  return parseAllDocuments(text).map((d) => {
    expect(d.errors, file).toEqual([]);
    return d.toJS() as Obj;
  });
}

async function kustomizationObjects(): Promise<Array<{ file: string; obj: Obj }>> {
  const k = parse(await readFile(path.join(MANIFESTS, 'kustomization.yaml'), 'utf8')) as { resources: string[] };
  const out: Array<{ file: string; obj: Obj }> = [];
  for (const file of k.resources) for (const obj of await loadDocs(file)) out.push({ file, obj });
  return out;
}

// Kinds of other projects (cert-manager, KubeVirt): their CRDs are not ours to validate.
const EXTERNAL = new Set(['cert-manager.io/v1 Issuer', 'cert-manager.io/v1 Certificate', 'migrations.kubevirt.io/v1alpha1 MigrationPolicy', 'monitoring.coreos.com/v1 ServiceMonitor']);

async function modelFor(apiVersion: string, kind: string): Promise<new (o: unknown) => { validate(): void }> {
  const mod = (await import(`kubernetes-models/${apiVersion}/${kind}`)) as Record<string, new (o: unknown) => { validate(): void }>;
  const ctor = mod[kind];
  if (!ctor) throw new Error(`no model for ${apiVersion} ${kind}`);
  return ctor;
}

async function crdSchema(file: string): Promise<object> {
  const [crd] = await loadDocs(file);
  const spec = crd?.spec as { versions: Array<{ schema: { openAPIV3Schema: object } }> };
  return spec.versions[0]!.schema.openAPIV3Schema;
}

/**
 * The API server's strict field validation (kubectl's default) rejects fields a structural
 * schema does not declare: the same as additionalProperties: false on every object with
 * properties (which a CRD itself may not say).
 */
function strictFields(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(strictFields);
  if (schema === null || typeof schema !== 'object') return schema;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(schema)) out[k] = strictFields(v);
  if ('properties' in out && !('additionalProperties' in out) && !('x-kubernetes-preserve-unknown-fields' in out)) {
    const props = out.properties as Record<string, unknown>;
    // metadata is validated by the API server itself.
    if (!('metadata' in props && 'kind' in props)) out.additionalProperties = false;
  }
  return out;
}

describe('manifests', () => {
  it('every object of the kustomization is valid against its schema', async () => {
    const objs = await kustomizationObjects();
    expect(objs.length).toBeGreaterThan(10);
    for (const { file, obj } of objs) {
      const key = `${obj.apiVersion} ${obj.kind}`;
      if (EXTERNAL.has(key)) continue;
      const Model = await modelFor(obj.apiVersion, obj.kind);
      expect(() => new Model(obj).validate(), `${file}: ${key} ${obj.metadata.name}`).not.toThrow();
    }
  });

  it('the example CachedImage is accepted by the CRD schema and by the shared zod schema, and bad ones by neither', async () => {
    const ajv = new Ajv({ strict: false });
    const validate = ajv.compile(strictFields(await crdSchema('crds/cachedimage.yaml')) as object);
    const [example] = await loadDocs('examples/cachedimage.yaml');
    expect(validate(example), JSON.stringify(validate.errors)).toBe(true);
    expect(CachedImageSchema.safeParse(example).success).toBe(true);

    const bad = structuredClone(example) as unknown as { spec: { source: { http: { sha256: string } } } };
    bad.spec.source.http.sha256 = 'not-a-hash';
    expect(validate(bad)).toBe(false);
    expect(CachedImageSchema.safeParse(bad).success).toBe(false);

    const unknownField = { ...(example as object), spec: { ...(example?.spec as object), bogus: 1 } };
    expect(validate(unknownField)).toBe(false);
    expect(CachedImageSchema.safeParse(unknownField).success).toBe(false);
  });

  it('the example VM template carries valid SPDK volumes', async () => {
    const [vm] = await loadDocs('examples/vm.yaml');
    const template = (vm as unknown as { spec: { template: unknown } }).spec.template as { metadata: object };
    const vmi = parseVmi({ apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', ...template, metadata: { name: 'x', ...template.metadata } });
    expect(spdkVolumesOf(vmi).map((v) => v.name)).toEqual(['rootdisk', 'scratch']);
  });

  it('the webhook configuration, service, deployment and certificate agree', async () => {
    const objs = (await kustomizationObjects()).map((o) => o.obj);
    const find = (kind: string) => objs.filter((o) => o.kind === kind);
    const mwc = find('MutatingWebhookConfiguration')[0] as unknown as {
      webhooks: Array<{ clientConfig: { service: { name: string; namespace: string; port: number } }; failurePolicy: string; sideEffects: string; timeoutSeconds: number }>;
    };
    const svc = find('Service').find((s) => s.metadata.name === mwc.webhooks[0]!.clientConfig.service.name) as unknown as {
      metadata: { namespace: string }; spec: { ports: Array<{ port: number }> };
    };
    expect(svc, 'service named by the webhook exists').toBeDefined();
    expect(svc.metadata.namespace).toBe(mwc.webhooks[0]!.clientConfig.service.namespace);
    expect(svc.spec.ports.map((p) => p.port)).toContain(mwc.webhooks[0]!.clientConfig.service.port);
    for (const w of mwc.webhooks) {
      expect(w.failurePolicy).toBe('Fail');
      expect(w.sideEffects).toBe('None');
      expect(w.timeoutSeconds).toBeLessThanOrEqual(10);
    }
    const cert = find('Certificate')[0] as unknown as { spec: { secretName: string } };
    const dep = find('Deployment')[0] as unknown as { spec: { replicas: number; template: { spec: { volumes: Array<{ secret?: { secretName: string } }> } } } };
    expect(dep.spec.replicas).toBe(2);
    expect(dep.spec.template.spec.volumes.map((v) => v.secret?.secretName)).toContain(cert.spec.secretName);
  });

  it('post-copy is refused by the shipped MigrationPolicy', async () => {
    const [policy] = await loadDocs('kubevirt/migration-policy.yaml');
    expect((policy as unknown as { spec: { allowPostCopy: boolean } }).spec.allowPostCopy).toBe(false);
  });
});

describe('manifests and the CLI agree', () => {
  it('every flag a container passes is a flag of that kubevirt-spdk command', async () => {
    const { allCommandFlags } = await import('../../../src/cli/docs/render.js');
    const flags = await allCommandFlags();
    const objs = (await kustomizationObjects()).map((o) => o.obj);
    type Container = { name: string; image: string; args?: string[] };
    const containers = objs
      .filter((o) => o.kind === 'DaemonSet' || o.kind === 'Deployment')
      .flatMap((o) => (o.spec as { template: { spec: { containers: Container[] } } }).template.spec.containers)
      .filter((c) => c.image === 'kubevirt-spdk');
    expect(containers.map((c) => c.name).sort()).toEqual(['agent', 'device-plugin', 'webhook']);
    for (const c of containers) {
      const [command, ...args] = c.args ?? [];
      const known = new Set((flags.get(command ?? '') ?? []).map((f) => f.flag.replace(/^--/, '')));
      expect(known.size, `command ${command}`).toBeGreaterThan(0);
      for (const a of args) expect(known, `${c.name}: ${a}`).toContain(a.replace(/^--/, '').split('=')[0]);
    }
  });
});
