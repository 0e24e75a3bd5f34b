import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse } from 'yaml';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../helpers/cli.js';
import { CachedImageSchema } from '../../../src/api/cachedimage.js';

/**
 * `spec.prefetch` is refused at `kubectl apply` where the CRD's structural schema can say so
 * (bounds, operators, label syntax of values and expression keys), and the shared zod schema
 * refuses the same objects: the two never disagree on what is valid.
 */

async function schema(): Promise<object> {
  const crd = parse(await readFile(path.join(REPO_ROOT, 'manifests/crds/cachedimage.yaml'), 'utf8')) as { spec: { versions: Array<{ schema: { openAPIV3Schema: object } }> } };
  return crd.spec.versions[0]!.schema.openAPIV3Schema;
}

const image = (prefetch: unknown) => ({ apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name: 'fedora' }, spec: { source: { hostPath: { path: '/f.raw' } }, prefetch } });

describe('CachedImage CRD: spec.prefetch', () => {
  it('the CRD and the zod schema accept and refuse the same prefetches', async () => {
    const validate = new Ajv({ strict: false }).compile(await schema());
    const good = [
      { count: 3 },
      { nodeSelector: { matchLabels: { 'node-role.kubernetes.io/worker': '' } } },
      { nodeSelector: { matchExpressions: [{ key: 'topology.kubernetes.io/zone', operator: 'In', values: ['eu-1a', 'eu-1b'] }, { key: 'gpu', operator: 'DoesNotExist' }] }, count: 256 },
    ];
    const bad = [
      {},
      { count: 0 },
      { count: 257 },
      { count: 2.5 },
      { nodeSelector: { matchExpressions: [{ key: 'zone', operator: 'Gt', values: ['1'] }] } },
      { nodeSelector: { matchExpressions: [{ key: 'bad key', operator: 'Exists' }] } },
      { nodeSelector: { matchExpressions: [{ key: 'zone', operator: 'In', values: ['not ok!'] }] } },
      { nodeSelector: { matchLabels: { zone: '-dash-' } } },
      { nodeSelector: { matchLabels: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v'])) } },
      { nodeSelector: { matchExpressions: [{ key: 'zone', operator: 'In', values: Array.from({ length: 65 }, (_, i) => `v${i}`) }] } },
    ];
    for (const p of good) {
      expect(validate(image(p)), `${JSON.stringify(p)}: ${JSON.stringify(validate.errors)}`).toBe(true);
      expect(CachedImageSchema.safeParse(image(p)).success, JSON.stringify(p)).toBe(true);
    }
    for (const p of bad) {
      expect(validate(image(p)), JSON.stringify(p)).toBe(false);
      expect(CachedImageSchema.safeParse(image(p)).success, JSON.stringify(p)).toBe(false);
    }
  });
});
