/**
 * One `images:` entry sets the image of every kubevirt-spdk container and of the hook sidecar
 * the webhook injects into every SPDK VMI (its SIDECAR_IMAGE env): on the real output of
 * `kubectl kustomize`, for the shipped kustomization and for an overlay that sets the image.
 * Without a kubectl whose kustomize is v4 or newer, the kustomization is checked by
 * kustomize's documented semantics instead (images transformer + its fieldSpecs), and the
 * test says so.
 */
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { REPO_ROOT } from '../../helpers/cli.js';

const run = promisify(execFile);
const MANIFESTS = path.join(REPO_ROOT, 'manifests');

async function kubectlKustomizeVersion(): Promise<string | undefined> {
  try {
    const { stdout } = await run('kubectl', ['version', '--client'], { timeout: 20_000 });
    const v = /Kustomize Version: v(\d+)\.(\d+)/.exec(stdout);
    return v && Number(v[1]) >= 4 ? `v${v[1]}.${v[2]}` : undefined;
  } catch {
    return undefined;
  }
}
const kustomizeVersion = await kubectlKustomizeVersion();
if (!kustomizeVersion) console.warn('kustomize-images: no kubectl with kustomize >= v4; checking the kustomization by its documented semantics only');

type Container = { name: string; image: string; env?: Array<{ name: string; value?: string }> };
type Obj = { kind: string; metadata: { name: string }; spec?: { template?: { spec?: { containers?: Container[] } } } };

/** Every image a kubevirt-spdk pod runs or injects: containers, and the webhook's SIDECAR_IMAGE. */
function imagesOf(objs: Obj[]): Array<{ where: string; image: string }> {
  const out: Array<{ where: string; image: string }> = [];
  for (const o of objs) {
    for (const c of o.spec?.template?.spec?.containers ?? []) {
      out.push({ where: `${o.kind}/${o.metadata.name}/${c.name}`, image: c.image });
      for (const e of c.env ?? []) if (e.name === 'SIDECAR_IMAGE') out.push({ where: `${o.kind}/${o.metadata.name}/${c.name} env SIDECAR_IMAGE`, image: e.value ?? '' });
    }
  }
  return out;
}

async function kustomize(dir: string): Promise<Obj[]> {
  const { stdout } = await run('kubectl', ['kustomize', dir], { timeout: 60_000, maxBuffer: 64 * 1024 * 1024 });
  return parseAllDocuments(stdout).map((d) => d.toJS() as Obj);
}

const tmpDirs: string[] = [];
afterAll(async () => {
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true });
});

describe('one images: entry sets every container and the injected sidecar', () => {
  it.skipIf(!kustomizeVersion)('kubectl kustomize manifests/: the webhook injects the image its own container runs', async () => {
    const images = imagesOf(await kustomize(MANIFESTS));
    const ours = images.filter((i) => !i.where.includes('/spdk-tgt'));
    expect(ours.map((i) => i.where)).toContain('Deployment/kubevirt-spdk-webhook/webhook env SIDECAR_IMAGE');
    expect(new Set(ours.map((i) => i.image))).toEqual(new Set(['registry.example.org/kubevirt-spdk/kubevirt-spdk:v0.1.0']));
  });

  it.skipIf(!kustomizeVersion)('an overlay that sets the image (as `kustomize edit set image` writes it) moves the sidecar with it', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'ks-overlay-'));
    tmpDirs.push(dir);
    await cp(MANIFESTS, path.join(dir, 'base'), { recursive: true });
    await writeFile(
      path.join(dir, 'kustomization.yaml'),
      'resources: [base]\nimages:\n  - name: registry.example.org/kubevirt-spdk/kubevirt-spdk\n    newName: mirror.example.com/ks/kubevirt-spdk\n    newTag: v9.9.9\n',
    );
    const ours = imagesOf(await kustomize(dir)).filter((i) => !i.where.includes('/spdk-tgt'));
    expect(ours).toHaveLength(4);
    expect(new Set(ours.map((i) => i.image))).toEqual(new Set(['mirror.example.com/ks/kubevirt-spdk:v9.9.9']));
  });

  it("by kustomize's documented semantics: SIDECAR_IMAGE names the image the images transformer rewrites, at a path it is configured for", async () => {
    const k = parse(await readFile(path.join(MANIFESTS, 'kustomization.yaml'), 'utf8')) as {
      images: Array<{ name: string }>;
      configurations?: string[];
    };
    const fieldSpecs = [];
    for (const f of k.configurations ?? []) {
      const c = parse(await readFile(path.join(MANIFESTS, f), 'utf8')) as { images?: Array<{ kind?: string; path: string }> };
      fieldSpecs.push(...(c.images ?? []));
    }
    // The images transformer rewrites a value at a configured path when it names an image of `images:`.
    expect(fieldSpecs).toContainEqual({ kind: 'Deployment', path: 'spec/template/spec/containers/env/value' });
    const docs = parseAllDocuments(await readFile(path.join(MANIFESTS, 'webhook/deployment.yaml'), 'utf8')).map((d) => d.toJS() as Obj);
    const webhook = docs.find((d) => d.kind === 'Deployment')?.spec?.template?.spec?.containers?.find((c) => c.name === 'webhook');
    const env = webhook?.env?.find((e) => e.name === 'SIDECAR_IMAGE')?.value;
    expect(env).toBe(webhook?.image);
    expect(k.images.map((i) => i.name)).toContain(env);
  });
});
