import { afterEach, beforeEach, describe, expect, it, vi, type MockInstance } from 'vitest';
import { parseCachedImages } from '../../../src/api/cachedimage.js';
import { parseVmiYaml } from '../../../src/api/vmi.js';
import { parseVolumesAnnotation } from '../../../src/api/volumes.js';
import { problemsOf } from '../../helpers/validation.js';

/**
 * Strict YAML: what the `yaml` library only warns about (an unresolved tag becomes a plain
 * string, an unknown directive is skipped) must be a ValidationError naming the field, and no
 * process warning may be printed.
 */

const PLAIN = 'is not allowed: only plain values (strings, numbers, booleans, lists, mappings)';
const SHA = 'a'.repeat(64);

let warn: MockInstance<typeof process.emitWarning>;
beforeEach(() => {
  warn = vi.spyOn(process, 'emitWarning');
});
afterEach(() => {
  expect(warn).not.toHaveBeenCalled();
  warn.mockRestore();
});

describe('volumes annotation: YAML tags and directives are errors naming the field', () => {
  const cases: Array<[string, string, string[]]> = [
    [
      'a js/function on a field',
      '- name: a\n  spdkVhostBlkDisk:\n    blank: {}\n    capacity: !!js/function "function(){}"\n',
      [`volumes[0].spdkVhostBlkDisk.capacity: YAML tag !!js/function (line 4, column 15) ${PLAIN}`],
    ],
    ['a local tag on a field', '- {name: !x a, spdkVhostBlkDisk: {bdev: b}}', [`volumes[0].name: YAML tag !x (line 1, column 10) ${PLAIN}`]],
    ['a tag on a list item', '- !!js/undefined\n', [`volumes[0]: YAML tag !!js/undefined (line 1, column 3) ${PLAIN}`]],
    ['a tag on the second item', '- {name: a, spdkVhostBlkDisk: {bdev: b}}\n- !!python/object {name: c}\n', [`volumes[1]: YAML tag !!python/object (line 2, column 3) ${PLAIN}`]],
    ['a tag on the whole document', '!!js/regexp /x/', [`volumes: YAML tag !!js/regexp (line 1, column 1) ${PLAIN}`]],
    ['a tag on a key', '- name: a\n  !k spdkVhostBlkDisk: {bdev: b}\n', [`volumes[0].spdkVhostBlkDisk: YAML tag !k (line 2, column 3) ${PLAIN}`]],
    [
      'two tags, two problems',
      '- name: a\n  spdkVhostBlkDisk: {image: !i x, capacity: !c 1Gi}\n',
      [`volumes[0].spdkVhostBlkDisk.image: YAML tag !i (line 2, column 29) ${PLAIN}`, `volumes[0].spdkVhostBlkDisk.capacity: YAML tag !c (line 2, column 45) ${PLAIN}`],
    ],
    ['an unsupported YAML version', '%YAML 1.3\n---\n- {name: a, spdkVhostBlkDisk: {bdev: b}}\n', ['volumes: not valid YAML: Unsupported YAML version 1.3 at line 1, column 7']],
    ['an unknown directive', '%FOO bar\n---\n- {name: a, spdkVhostBlkDisk: {bdev: b}}\n', ['volumes: not valid YAML: Unknown directive %FOO at line 1, column 1']],
  ];
  for (const [what, text, want] of cases) {
    it(what, () => {
      expect(problemsOf(() => parseVolumesAnnotation(text))).toEqual(want);
    });
  }

  it('a tag the core schema knows (!!str) is plain YAML and still parses', () => {
    expect(parseVolumesAnnotation('- {name: !!str a, spdkVhostBlkDisk: {bdev: !!str b}}').map((v) => v.name)).toEqual(['a']);
  });

  it('the same text is refused every time (a refusal is never cached as a success)', () => {
    const text = '- {name: a, spdkVhostBlkDisk: {bdev: !t b}}';
    expect(problemsOf(() => parseVolumesAnnotation(text))).toHaveLength(1);
    expect(problemsOf(() => parseVolumesAnnotation(text))).toHaveLength(1);
  });
});

describe('CachedImage files: tags and directives are errors naming the document and field', () => {
  const image = (spec: string, name = 'img'): string => `apiVersion: kubevirt-spdk.io/v1alpha1\nkind: CachedImage\nmetadata: {name: ${name}}\nspec: ${spec}\n`;

  it('a tag on a field of the second document', () => {
    const text = `${image(`{source: {hostPath: {path: /a}}}`)}---\n${image(`{source: {http: {url: !!js/function "x", sha256: "${SHA}"}}}`, 'b')}`;
    expect(problemsOf(() => parseCachedImages(text, 'images.yaml'))).toEqual([`images.yaml[1].spec.source.http.url: YAML tag !!js/function (line 9, column 29) ${PLAIN}`]);
  });

  it('an unknown directive', () => {
    expect(problemsOf(() => parseCachedImages(`%FOO bar\n---\n${image('{source: {hostPath: {path: /a}}}')}`))).toEqual(['images[0]: not valid YAML: Unknown directive %FOO at line 1, column 1']);
  });

  it('a stream with a directive and no document', () => {
    expect(problemsOf(() => parseCachedImages('%YAML 1.3\n'))).toEqual([expect.stringMatching(/^images: not valid YAML: /)]);
  });

  it('clean documents still parse', () => {
    expect(parseCachedImages(image('{source: {hostPath: {path: /a}}}')).map((i) => i.metadata.name)).toEqual(['img']);
  });
});

describe('VMI files (standalone): tags are errors too', () => {
  it('names the field', () => {
    const text = 'apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: !!js/function a\n';
    expect(problemsOf(() => parseVmiYaml(text, 'vmi.yaml'))).toEqual([`vmi.yaml.metadata.name: YAML tag !!js/function (line 4, column 9) ${PLAIN}`]);
  });
});

describe('the plain-YAML fast path', () => {
  it('reads what the strict parser reads, for any tree of plain values', async () => {
    const fc = (await import('fast-check')).default;
    const { parse, stringify } = await import('yaml');
    const { readPlainYaml } = await import('../../../src/api/yaml.js');
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const text = stringify(value);
        const fast = readPlainYaml(text);
        if (fast === undefined) return; // tags/anchors/odd text: the strict path decides
        expect(fast.value).toEqual(parse(text, { uniqueKeys: true, maxAliasCount: 0 }));
      }),
      { numRuns: 300 },
    );
  });

  it('leaves anything it would have to judge to the strict path', async () => {
    const { readPlainYaml } = await import('../../../src/api/yaml.js');
    expect(readPlainYaml('a: 1\na: 2\n')).toBeUndefined(); // duplicate key
    expect(readPlainYaml('a: !!js/function x\n')).toBeUndefined();
    expect(readPlainYaml('a: &x 1\nb: *x\n')).toBeUndefined();
    expect(readPlainYaml('- name: root\n  spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}\n')).toEqual({
      value: [{ name: 'root', spdkVhostBlkDisk: { blank: {}, capacity: '1Gi' } }],
    });
  });
});

describe('size and depth limits come before any YAML parser (F3)', () => {
  // ~2,000 nested "[" in 4 KB aborted the process (V8 allocation failure in the composer).
  const deep = [
    ['the reported input', '[ '.repeat(2000)],
    ['2,000 brackets', '['.repeat(2000)],
    ['30,000 brackets', '['.repeat(30_000)],
    ['compact block sequences', '- '.repeat(16_000)],
    ['flow mappings', '{a: '.repeat(8000)],
    ['a tag forces the strict path', `!x ${'['.repeat(20_000)}`],
    ['quotes cannot hide the nesting', '[ "]" '.repeat(5000)],
    ['indentation', Array.from({ length: 180 }, (_, i) => `${' '.repeat(i)}k:`).join('\n')],
  ] as const;
  for (const [what, text] of deep) {
    it(`the annotation: ${what}`, () => {
      const problems = problemsOf(() => parseVolumesAnnotation(text));
      expect(problems).toHaveLength(1);
      expect(problems[0]).toMatch(/^volumes: YAML nests deeper than 16 levels \(line \d+\)/);
    });
  }

  it('the annotation: over 32 KiB is refused before parsing', () => {
    expect(problemsOf(() => parseVolumesAnnotation(`# ${'x'.repeat(40_000)}\n`))).toEqual(['volumes: must be at most 32768 characters, found 40003']);
  });

  it('a real annotation is far from the limits', () => {
    const vol = (i: number) => `- name: d${i}\n  spdkVhostBlkDisk:\n    blank: {}\n    capacity: 1Gi\n`;
    expect(parseVolumesAnnotation(Array.from({ length: 26 }, (_, i) => vol(i)).join(''))).toHaveLength(26);
    // JSON, and the strict path (an anchor-free document with a comment and a quoted key).
    expect(parseVolumesAnnotation('[{"name":"a","spdkVhostBlkDisk":{"blank":{},"capacity":"1Gi"}}]')).toHaveLength(1);
    expect(parseVolumesAnnotation('%YAML 1.2\n---\n- {name: a, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}}\n')).toHaveLength(1);
  });

  it('the agent and the converter meet the same rule (the one parse of the annotation)', async () => {
    const { desiredVmiOf } = await import('../../../src/agent/desired.js');
    const { convertDomain } = await import('../../../src/converter/index.js');
    const { parseVmi } = await import('../../../src/api/vmi.js');
    const vmi = parseVmi({ metadata: { name: 'deep', annotations: { 'kubevirt-spdk.io/volumes': '[ '.repeat(2000), 'kubevirt-spdk.io/slot': 'slot-01' } } });
    const want = /^metadata\.annotations\["kubevirt-spdk\.io\/volumes"\]: YAML nests deeper than 16 levels/;
    expect(desiredVmiOf({ origin: 'test', vmi, slot: 'slot-01' }, new Map()).problems[0]).toMatch(want);
    expect(problemsOf(() => convertDomain('<domain type="kvm"><name>x</name></domain>', vmi))[0]).toMatch(want);
  });

  it('a VMI file and a CachedImage file: the same check, with file limits', () => {
    const text = `metadata:\n  name: ${'['.repeat(20_000)}\n`;
    expect(problemsOf(() => parseVmiYaml(text))[0]).toMatch(/^vmi: YAML nests deeper than 64 levels \(line 2\)/);
    expect(problemsOf(() => parseCachedImages(text))[0]).toMatch(/^images: YAML nests deeper than 64 levels \(line 2\)/);
  });
});
