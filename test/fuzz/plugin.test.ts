import { readFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { parse as parseYaml } from 'yaml';
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../src/api/errors.js';
import { INVOCATION_CONTEXTS, mutateDomain } from '../../src/plugin/server.js';
import { silentLogger } from '../../src/log.js';
import { REPO_ROOT } from '../helpers/cli.js';

/**
 * Property-based fuzzing of the plugin's MutateDomain core (what virt-launcher, and through the
 * VMI a tenant, sends): it answers with bytes or refuses with a ValidationError (which the
 * server turns into INVALID_ARGUMENT), never anything else. FUZZ_RUNS / FUZZ_SEED as in
 * inputs.test.ts.
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? '200');
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : Math.floor(Math.random() * 2 ** 31);
console.log(`[fuzz] plugin seed=${SEED} runs=${RUNS} (replay with FUZZ_SEED=${SEED})`);

const FIXTURES = path.join(REPO_ROOT, 'test/fixtures/converter');
const DOMAIN = readFileSync(path.join(FIXTURES, 'kubevirt-q35.xml'), 'utf8');
const VMI = parseYaml(readFileSync(path.join(FIXTURES, 'vmi-fedora.yaml'), 'utf8')) as { metadata: Record<string, unknown> };

describe('fuzz: plugin MutateDomain', () => {
  it('answers bytes or throws ValidationError, whatever the request', () => {
    const domain = fc.oneof(
      fc.constant(DOMAIN),
      fc.string(),
      fc.nat(DOMAIN.length).map((n) => DOMAIN.slice(0, n)),
      fc.tuple(fc.nat(DOMAIN.length), fc.string()).map(([n, s]) => DOMAIN.slice(0, n) + s + DOMAIN.slice(n)),
    );
    const vmi = fc.oneof(
      fc.constant(JSON.stringify(VMI)),
      fc.string(),
      fc.anything().map((a) => JSON.stringify({ ...VMI, metadata: { ...VMI.metadata, annotations: { 'kubevirt-spdk.io/volumes': a } } }) ?? ''),
      fc.string().map((t) => JSON.stringify({ ...VMI, metadata: { ...VMI.metadata, annotations: { 'kubevirt-spdk.io/volumes': t } } })),
    );
    const context = fc.oneof(fc.constantFrom(...INVOCATION_CONTEXTS), fc.string()).map((c) => ({ invocation_context: c }));
    fc.assert(
      fc.property(fc.oneof(fc.constant('libvirt'), fc.string()), domain, vmi, fc.option(context, { nil: null }), (domainType, d, v, ctx) => {
        try {
          const out = mutateDomain({ domain_type: domainType, domain: Buffer.from(d), vmi: Buffer.from(v), sidecar_context: ctx }, undefined, silentLogger);
          expect(Buffer.isBuffer(out)).toBe(true);
          expect(domainType).toBe('libvirt');
        } catch (e) {
          if (!(e instanceof ValidationError)) throw e;
          expect(e.problems.length).toBeGreaterThan(0);
        }
      }),
      { numRuns: RUNS, seed: SEED },
    );
  });
});
