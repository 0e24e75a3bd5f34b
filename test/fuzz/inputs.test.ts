import fc from 'fast-check';
import { stringify } from 'yaml';
import { afterEach, beforeEach, describe, expect, it, vi, type MockInstance } from 'vitest';
import { ValidationError } from '../../src/api/errors.js';
import { DNS1123_LABEL, VOLUMES_ANNOTATION, parseVolumesAnnotation } from '../../src/api/volumes.js';
import { parseCachedImages } from '../../src/api/cachedimage.js';
import { JsonStreamScanner } from '../../src/spdk/framing.js';
import { mutate } from '../../webhooks/mutate.js';
import type { AdmissionRequest } from '../../webhooks/admission-review.js';
import { testCatalog } from '../helpers/webhook.js';

/**
 * Property-based fuzzing of the inputs users and SPDK control: the volumes annotation, the
 * webhook's mutate, and the JSON-RPC framing. FUZZ_RUNS scales the case count (`make fuzz`);
 * the seed is printed and FUZZ_SEED replays it.
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? '200');
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : Math.floor(Math.random() * 2 ** 31);
const params = { numRuns: RUNS, seed: SEED };
console.log(`[fuzz] inputs seed=${SEED} runs=${RUNS} (replay with FUZZ_SEED=${SEED})`);

const catalog = testCatalog();

const nasty = fc.oneof(
  fc.string(),
  fc.string({ unit: 'grapheme', maxLength: 40 }),
  fc.constantFrom('..', '../../etc', 'a/b', '/abs', 'A', 'a'.repeat(64), 'a'.repeat(200), '-a', 'a-', 'ä', 'a\u0000b', 'a\nb', '%2e%2e', 'slot-01/../x', ' a', 'ＡＢ'),
);
const quantity = fc.oneof(fc.constantFrom('20Gi', '1', '0', '-1Gi', '1e400', '9'.repeat(400), 'Gi', '1.5Gi', '1Pi', NaN as unknown as string), fc.string(), fc.integer(), fc.double());
const disk = fc.record(
  {
    image: fc.oneof(fc.constant('fedora-40'), nasty),
    blank: fc.oneof(fc.constant({}), fc.anything()),
    bdev: nasty,
    capacity: quantity,
    bootOrder: fc.oneof(fc.integer(), fc.anything()),
    queues: fc.oneof(fc.integer({ min: -5, max: 1000 }), fc.anything()),
    reconnectTimeout: fc.oneof(fc.constantFrom('10s', '0s', '1.5s', '-1s', '99999999999h'), fc.string()),
    readonly: fc.oneof(fc.boolean(), fc.anything()),
    extra: fc.anything(),
  },
  { requiredKeys: [] },
);
const volume = fc.record({ name: fc.oneof(fc.constantFrom('root', 'data'), nasty), spdkVhostBlkDisk: fc.oneof(disk, fc.anything()) }, { requiredKeys: [] });
const volumesDoc = fc.oneof(fc.array(volume, { maxLength: 30 }), fc.anything());

/** Text a user (or an attacker) could put in the annotation. */
const annotationText = fc.oneof(
  volumesDoc.map((d) => JSON.stringify(d) ?? 'null'),
  volumesDoc.map((d) => stringify(d)),
  fc.string(),
  fc.constantFrom(
    // Alias bomb ("billion laughs" in YAML).
    'a: &a ["x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c]',
    '- &v {name: root, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}}\n- *v',
    '- name: root\n  name: evil\n  spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}',
    `${'['.repeat(5000)}${']'.repeat(5000)}`,
    // Unclosed nesting aborted the process in the `yaml` composer (F3): refused by depth first.
    '[ '.repeat(2000),
    '{a: '.repeat(8000),
    `!x ${'['.repeat(20_000)}`,
    `${'- '.repeat(3000)}x`,
    '!!js/function "function(){}"',
    '- !!binary aGVsbG8=',
    '- name: root\n  spdkVhostBlkDisk: {blank: {}, capacity: 1Gi, __proto__: {polluted: true}}',
    '{"__proto__": {"polluted": true}}',
  ),
);

describe('fuzz: volumes annotation', () => {
  it('either parses to valid names or throws ValidationError; never anything else', () => {
    fc.assert(
      fc.property(annotationText, (text) => {
        try {
          const vols = parseVolumesAnnotation(text);
          for (const v of vols) {
            expect(v.name).toMatch(DNS1123_LABEL);
            expect(v.name.length).toBeLessThanOrEqual(63);
            expect(v.name).not.toMatch(/[/.]/);
          }
          expect(new Set(vols.map((v) => v.name)).size).toBe(vols.length);
        } catch (e) {
          if (!(e instanceof ValidationError)) throw e;
          expect(e.problems.length).toBeGreaterThan(0);
        }
        expect(({} as Record<string, unknown>).polluted).toBeUndefined();
      }),
      params,
    );
  });
});

/**
 * Strict YAML: the `yaml` library resolves an unknown tag to a plain value and only warns.
 * Any tag outside the core schema on any field must be refused, naming that field, and no
 * process warning may be printed whatever the input.
 */
describe('fuzz: YAML tags and warnings', () => {
  let warn: MockInstance<typeof process.emitWarning>;
  beforeEach(() => {
    warn = vi.spyOn(process, 'emitWarning');
  });
  afterEach(() => {
    expect(warn).not.toHaveBeenCalled();
    warn.mockRestore();
  });

  // `x-` keeps the tag out of the core and YAML 1.1 schemas (!!str, !!binary, ...), which resolve.
  const tag = fc.tuple(fc.constantFrom('!', '!!'), fc.stringMatching(/^[a-z][a-z0-9/]{0,12}$/)).map(([bang, t]) => `${bang}x-${t}`);
  const fields = ['image', 'capacity', 'bootOrder', 'queues', 'reconnectTimeout', 'readonly', 'bdev'] as const;
  const scalar = fc.oneof(fc.string({ maxLength: 20 }), fc.integer(), fc.boolean()).map((v) => JSON.stringify(v));

  it('a tag on any field of any volume is a ValidationError naming that field', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 4 }), fc.nat(), fc.constantFrom(...fields), tag, scalar, (count, which, field, t, value) => {
        const at = which % count;
        const text = Array.from({ length: count }, (_, i) => {
          const v = i === at ? `${t} ${value}` : '"1Gi"';
          return `- name: d${i}\n  spdkVhostBlkDisk:\n    blank: {}\n    ${field === 'capacity' ? 'capacity' : `capacity: 1Gi\n    ${field}`}: ${v}\n`;
        }).join('');
        let problems: string[] = [];
        try {
          parseVolumesAnnotation(text);
        } catch (e) {
          if (!(e instanceof ValidationError)) throw e;
          problems = e.problems;
        }
        const esc = (x: string): string => x.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
        expect(problems).toContainEqual(expect.stringMatching(new RegExp(`^${esc(`volumes[${at}].spdkVhostBlkDisk.${field}: YAML tag ${t} (line `)}\\d+, column \\d+\\) is not allowed`)));
      }),
      params,
    );
  });

  it('tags, directives and garbage in a CachedImage file: a ValidationError or images, never a warning', () => {
    const doc = fc.oneof(
      fc.jsonValue().map((v) => stringify(v)),
      fc.string(),
      fc.tuple(tag, fc.jsonValue()).map(([t, v]) => `${t} ${JSON.stringify(v) ?? 'null'}`),
      fc.constantFrom('%YAML 1.3\n', '%FOO bar\n---\na: 1\n', '%TAG !e! tag:example.com,2000:\n---\n!e!foo x\n', 'a: !!set {x, y}\n', 'a: !!timestamp 2001-12-14\n'),
    );
    fc.assert(
      fc.property(fc.array(doc, { minLength: 1, maxLength: 3 }), (docs) => {
        try {
          parseCachedImages(docs.join('\n---\n'));
        } catch (e) {
          if (!(e instanceof ValidationError)) throw e;
          expect(e.problems.length).toBeGreaterThan(0);
        }
      }),
      params,
    );
  });
});

function request(annotations: unknown, spec: unknown, kind = 'VirtualMachineInstance'): AdmissionRequest {
  const metadata = { name: 'vm1', namespace: 'default', annotations };
  const vmi = { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', metadata, spec };
  const object = kind === 'VirtualMachine' ? { apiVersion: 'kubevirt.io/v1', kind, metadata: { name: 'vm' }, spec: { template: { metadata, spec } } } : vmi;
  return { uid: 'u', kind: { group: 'kubevirt.io', version: 'v1', kind }, operation: 'CREATE', object: object as Record<string, unknown> };
}

describe('fuzz: webhook mutate', () => {
  it('always answers (allow with a patch, or deny with a message); accepted volumes have valid names', () => {
    const annotations = fc.oneof(
      annotationText.map((t) => ({ [VOLUMES_ANNOTATION]: t })),
      fc.dictionary(fc.string(), fc.anything()),
      fc.anything(),
      fc.record({ [VOLUMES_ANNOTATION]: fc.anything(), 'hooks.kubevirt.io/hookSidecars': fc.oneof(fc.string(), fc.anything()) }),
    );
    const spec = fc.oneof(fc.constant({ domain: { devices: {} } }), fc.anything(), fc.record({ domain: fc.anything() }));
    fc.assert(
      fc.property(annotations, spec, fc.constantFrom('VirtualMachineInstance', 'VirtualMachine'), (ann, sp, kind) => {
        const res = mutate(request(ann, sp, kind), catalog, { sidecarImage: 'registry.example/x:1' });
        expect(res.uid).toBe('u');
        if (!res.allowed) {
          expect(res.status?.message ?? '').not.toBe('');
          return;
        }
        const text = (ann as Record<string, unknown> | null | undefined)?.[VOLUMES_ANNOTATION];
        if (typeof text === 'string' && res.patch !== undefined) {
          // Accepted: the same text must parse, with valid names only.
          const vols = parseVolumesAnnotation(text);
          for (const v of vols) expect(v.name).toMatch(DNS1123_LABEL);
        }
      }),
      params,
    );
  });
});

describe('fuzz: JSON-RPC framing', () => {
  const msg = fc.jsonValue().map((v) => ({ jsonrpc: '2.0', id: 1, result: v }));
  it('any split of back-to-back replies gives the same values, in order', () => {
    fc.assert(
      fc.property(fc.array(msg, { minLength: 1, maxLength: 8 }), fc.array(fc.nat(), { maxLength: 20 }), (msgs, cuts) => {
        const bytes = Buffer.from(msgs.map((m) => `${JSON.stringify(m)}${cuts.length % 2 ? '\n' : ''}`).join(''));
        const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        const s = new JsonStreamScanner();
        const got: unknown[] = [];
        let at = 0;
        for (const p of [...points, bytes.length]) {
          const r = s.push(bytes.subarray(at, p));
          expect(r.error).toBeUndefined();
          got.push(...r.values);
          at = p;
        }
        expect(got).toEqual(JSON.parse(JSON.stringify(msgs)));
        expect(s.buffered).toBe(0);
      }),
      params,
    );
  });

  it('garbage never throws: it yields values, waits for more, or reports a FramingError', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 10 }), (chunks) => {
        const s = new JsonStreamScanner(4096);
        for (const c of chunks) {
          const r = s.push(Buffer.from(c));
          if (r.error) {
            expect(r.error.name).toBe('FramingError');
            s.reset();
          }
        }
      }),
      params,
    );
  });

  it('bounds an endless value by the message limit', () => {
    const s = new JsonStreamScanner(1024);
    let err: unknown;
    for (let i = 0; i < 100 && !err; i++) err = s.push(Buffer.from(`{"a":"${'x'.repeat(100)}`)).error;
    expect(err).toBeDefined();
  });
});
