import { describe, expect, it } from 'vitest';
import { LabelSelectorSchema, labelsOf, matchesSelector, type LabelSelector } from '../../../src/api/labelselector.js';
import { CachedImageSchema } from '../../../src/api/cachedimage.js';
import { apiErrorMap, formatZodError } from '../../../src/api/errors.js';

const sel = (s: unknown): LabelSelector => LabelSelectorSchema.parse(s);
const problems = (s: unknown): string[] => {
  const res = LabelSelectorSchema.safeParse(s, { errorMap: apiErrorMap });
  return res.success ? [] : formatZodError('nodeSelector', res.error);
};

describe('label selectors: matching as Kubernetes does', () => {
  const labels = { 'topology.kubernetes.io/zone': 'z1', 'node-role.kubernetes.io/worker': '', disk: 'nvme' };

  it('matchLabels needs every key with its value (an empty value is a value)', () => {
    expect(matchesSelector(sel({ matchLabels: { disk: 'nvme' } }), labels)).toBe(true);
    expect(matchesSelector(sel({ matchLabels: { disk: 'nvme', 'node-role.kubernetes.io/worker': '' } }), labels)).toBe(true);
    expect(matchesSelector(sel({ matchLabels: { disk: 'ssd' } }), labels)).toBe(false);
    expect(matchesSelector(sel({ matchLabels: { absent: '' } }), labels)).toBe(false);
  });

  it('In, NotIn, Exists, DoesNotExist; all requirements ANDed; an empty selector selects every node', () => {
    expect(matchesSelector(sel({ matchExpressions: [{ key: 'topology.kubernetes.io/zone', operator: 'In', values: ['z0', 'z1'] }] }), labels)).toBe(true);
    expect(matchesSelector(sel({ matchExpressions: [{ key: 'topology.kubernetes.io/zone', operator: 'NotIn', values: ['z1'] }] }), labels)).toBe(false);
    // NotIn and DoesNotExist select nodes without the key.
    expect(matchesSelector(sel({ matchExpressions: [{ key: 'gpu', operator: 'NotIn', values: ['yes'] }] }), labels)).toBe(true);
    expect(matchesSelector(sel({ matchExpressions: [{ key: 'gpu', operator: 'DoesNotExist' }] }), labels)).toBe(true);
    expect(matchesSelector(sel({ matchExpressions: [{ key: 'gpu', operator: 'In', values: ['yes'] }] }), labels)).toBe(false);
    expect(matchesSelector(sel({ matchExpressions: [{ key: 'disk', operator: 'Exists' }, { key: 'gpu', operator: 'Exists' }] }), labels)).toBe(false);
    expect(matchesSelector(sel({ matchLabels: { disk: 'nvme' }, matchExpressions: [{ key: 'gpu', operator: 'DoesNotExist' }] }), labels)).toBe(true);
    expect(matchesSelector(sel({}), {})).toBe(true);
  });

  it('keys that look like object internals are plain labels', () => {
    expect(matchesSelector(sel({ matchExpressions: [{ key: 'constructor', operator: 'Exists' }] }), {})).toBe(false);
    expect(matchesSelector(sel({ matchExpressions: [{ key: 'toString', operator: 'DoesNotExist' }] }), {})).toBe(true);
    // A node label object parsed from JSON may carry an own `__proto__` key: still just a label.
    const odd = JSON.parse('{"__proto__": "x", "a": "b"}') as Record<string, string>;
    expect(matchesSelector(sel({ matchLabels: { a: 'b' } }), odd)).toBe(true);
    expect(matchesSelector(sel({ matchExpressions: [{ key: 'hasOwnProperty', operator: 'Exists' }] }), odd)).toBe(false);
  });

  it('labelsOf keeps string values only', () => {
    expect(labelsOf({ metadata: { labels: { a: 'x', b: 3, c: null } } })).toEqual({ a: 'x' });
    expect(labelsOf({ metadata: { labels: ['a'] } })).toEqual({});
    expect(labelsOf(null)).toEqual({});
  });
});

describe('label selectors: validation names the field and the rule', () => {
  it('refuses bad keys, bad values, operators without their values and unknown fields', () => {
    expect(problems({ matchLabels: { 'bad key': 'x' } })[0]).toMatch(/^nodeSelector\.matchLabels.*label key "bad key"/);
    expect(problems({ matchLabels: { 'UPPER.example/x': 'x' } })[0]).toMatch(/prefix must be a DNS subdomain/);
    expect(problems({ matchLabels: { ok: 'not ok!' } })[0]).toMatch(/^nodeSelector\.matchLabels\.ok: label value "not ok!"/);
    expect(problems({ matchLabels: { __proto__x: 'a' } })[0]).toMatch(/label key "__proto__x": its name must be/);
    expect(problems({ matchLabels: { ok: 'x'.repeat(64) } })[0]).toMatch(/at most 63 characters/);
    expect(problems({ matchExpressions: [{ key: 'a', operator: 'In' }] })).toEqual(['nodeSelector.matchExpressions[0].values: must not be empty with operator In']);
    expect(problems({ matchExpressions: [{ key: 'a', operator: 'Exists', values: ['x'] }] })).toEqual(['nodeSelector.matchExpressions[0].values: must be empty with operator Exists']);
    expect(problems({ matchExpressions: [{ key: 'a', operator: 'Gt', values: ['1'] }] })[0]).toMatch(/^nodeSelector\.matchExpressions\[0\]\.operator:/);
    expect(problems({ matchLabel: { a: 'b' } })[0]).toMatch(/unknown field\(s\) "matchLabel"/);
  });

  it('bounds the size: entries, requirements, values', () => {
    const many = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v']));
    expect(problems({ matchLabels: many })[0]).toMatch(/^nodeSelector\.matchLabels: must have at most 32 entries/);
    expect(problems({ matchExpressions: Array.from({ length: 33 }, () => ({ key: 'a', operator: 'Exists' })) })[0]).toMatch(/^nodeSelector\.matchExpressions:/);
    expect(problems({ matchExpressions: [{ key: 'a', operator: 'In', values: Array.from({ length: 65 }, (_, i) => `v${i}`) }] })[0]).toMatch(/^nodeSelector\.matchExpressions\[0\]\.values:/);
    // A huge key is refused without echoing all of it.
    const huge = problems({ matchLabels: { ['k'.repeat(100_000)]: 'v' } })[0] ?? '';
    expect(huge.length).toBeLessThan(1000);
  });
});

describe('CachedImage spec.prefetch', () => {
  const image = (prefetch: unknown) => ({ apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'CachedImage', metadata: { name: 'fedora' }, spec: { source: { hostPath: { path: '/images/f.raw' } }, prefetch } });
  const errs = (prefetch: unknown): string[] => {
    const res = CachedImageSchema.safeParse(image(prefetch), { errorMap: apiErrorMap });
    return res.success ? [] : formatZodError('fedora', res.error);
  };

  it('takes a selector, a count, or both', () => {
    expect(errs({ count: 3 })).toEqual([]);
    expect(errs({ nodeSelector: { matchLabels: { disk: 'nvme' } } })).toEqual([]);
    expect(errs({ nodeSelector: { matchLabels: { disk: 'nvme' } }, count: 2 })).toEqual([]);
  });

  it('refuses an empty prefetch, a count out of bounds or not whole, unknown fields', () => {
    expect(errs({})).toEqual(['fedora.spec.prefetch: must have nodeSelector, count or both']);
    expect(errs({ count: 0 })).toEqual(['fedora.spec.prefetch.count: must be at least 1']);
    expect(errs({ count: 257 })).toEqual(['fedora.spec.prefetch.count: must be at most 256']);
    expect(errs({ count: 1.5 })).toEqual(['fedora.spec.prefetch.count: must be an integer']);
    expect(errs({ count: '3' })).toEqual(['fedora.spec.prefetch.count: must be a number, not string']);
    expect(errs({ count: 1, nodes: ['a'] })).toEqual(['fedora.spec.prefetch: unknown field(s) "nodes"']);
  });
});
