import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../src/api/errors.js';
import { diskSource, parseVolumesAnnotation } from '../../../src/api/volumes.js';

/** The problems a ValidationError lists for the annotation text, or [] when it parses. */
function problems(text: string): string[] {
  try {
    parseVolumesAnnotation(text);
    return [];
  } catch (e) {
    if (!(e instanceof ValidationError)) throw e;
    return e.problems;
  }
}

const disk = (fields: string, name = 'a'): string => `- {name: ${name}, spdkVhostBlkDisk: {${fields}}}`;
const D = 'volumes[0].spdkVhostBlkDisk';
const BDEV_RULE = 'must be a bdev name ([A-Za-z0-9_.:-], optionally "<lvstore>/<lvol>"), never a path: no leading "/", no "." or ".." component';

describe('kubevirt-spdk.io/volumes: what parses', () => {
  it('reads the example of the design, with defaults filled in', () => {
    const vols = parseVolumesAnnotation(`
- name: rootdisk
  spdkVhostBlkDisk:
    image: fedora-40
    capacity: 20Gi
    bootOrder: 1
    queues: 4
    reconnectInterval: 10s
    readonly: false
- name: scratch
  spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}
- name: shared
  spdkVhostBlkDisk: {bdev: "nvme0n1:p1/x_y.z-0", readonly: true, reconnectInterval: 1m30s}
`);
    expect(vols).toEqual([
      {
        name: 'rootdisk',
        spdkVhostBlkDisk: { image: 'fedora-40', capacity: { text: '20Gi', bytes: 20 * 2 ** 30 }, bootOrder: 1, queues: 4, reconnectInterval: 10, readonly: false },
      },
      { name: 'scratch', spdkVhostBlkDisk: { blank: {}, capacity: { text: '1Gi', bytes: 2 ** 30 }, reconnectInterval: 1, readonly: false } },
      { name: 'shared', spdkVhostBlkDisk: { bdev: 'nvme0n1:p1/x_y.z-0', reconnectInterval: 90, readonly: true } },
    ]);
    expect(vols.map((v) => diskSource(v.spdkVhostBlkDisk))).toEqual([
      { kind: 'image', image: 'fedora-40' },
      { kind: 'blank' },
      { kind: 'bdev', bdev: 'nvme0n1:p1/x_y.z-0' },
    ]);
  });

  it('reads JSON too (JSON is YAML)', () => {
    expect(parseVolumesAnnotation('[{"name":"a","spdkVhostBlkDisk":{"bdev":"b","queues":256}}]')[0]?.spdkVhostBlkDisk.queues).toBe(256);
  });

  it.each([
    ['20Gi', 20 * 2 ** 30],
    ['512Mi', 512 * 2 ** 20],
    ['1G', 1e9],
    ['1.5Gi', 1.5 * 2 ** 30],
    ['1e9', 1e9],
    ['1073741824', 2 ** 30],
  ])('capacity %s is %d bytes', (text, bytes) => {
    expect(parseVolumesAnnotation(disk(`blank: {}, capacity: ${text}`))[0]?.spdkVhostBlkDisk.capacity?.bytes).toBe(bytes);
  });

  it.each([
    ['10s', 10],
    ['1m', 60],
    ['1m30s', 90],
    ['1h', 3600],
    ['1500ms', undefined],
  ])('reconnectInterval %s is %s seconds', (text, seconds) => {
    if (seconds === undefined) expect(problems(disk(`bdev: b, reconnectInterval: ${text}`))).toHaveLength(1);
    else expect(parseVolumesAnnotation(disk(`bdev: b, reconnectInterval: ${text}`))[0]?.spdkVhostBlkDisk.reconnectInterval).toBe(seconds);
  });

  it('reads the deprecated name reconnectTimeout as the interval it always was (default 1 s)', () => {
    expect(parseVolumesAnnotation(disk('bdev: b, reconnectTimeout: 10s'))[0]?.spdkVhostBlkDisk).toMatchObject({ reconnectInterval: 10, reconnectTimeout: 10 });
    expect(parseVolumesAnnotation(disk('bdev: b'))[0]?.spdkVhostBlkDisk.reconnectInterval).toBe(1);
    expect(problems(disk('bdev: b, reconnectTimeout: 10s, reconnectInterval: 1s'))).toEqual([`${D}.reconnectTimeout: is the deprecated name of reconnectInterval: give only reconnectInterval`]);
  });

  it('accepts 26 volumes and queues at both bounds', () => {
    const many = Array.from({ length: 26 }, (_, i) => disk(`bdev: b${i}, queues: ${i % 2 ? 1 : 256}`, `d${i}`)).join('\n');
    expect(parseVolumesAnnotation(many)).toHaveLength(26);
  });

  it('hands out independent results for the same text (parsed once, copied)', () => {
    const text = disk('blank: {}, capacity: 2Gi');
    const first = parseVolumesAnnotation(text);
    first[0]!.spdkVhostBlkDisk.capacity!.bytes = 1;
    expect(parseVolumesAnnotation(text)[0]?.spdkVhostBlkDisk.capacity?.bytes).toBe(2 * 2 ** 30);
    expect(problems(disk('blank: {}'))).toHaveLength(1);
    expect(problems(disk('blank: {}'))).toHaveLength(1);
  });

  it('accepts a 63-character name', () => {
    expect(parseVolumesAnnotation(disk('bdev: b', 'a'.repeat(63)))[0]?.name).toHaveLength(63);
  });
});

describe('kubevirt-spdk.io/volumes: every rule has a message naming the field', () => {
  const cases: Array<[string, string, string[]]> = [
    // the document
    ['not YAML', '- {name: a', ['volumes: not valid YAML: Flow map in block collection must be sufficiently indented and end with a } at line 1, column 11']],
    ['duplicate keys', '- {name: a, spdkVhostBlkDisk: {bdev: b}, name: c}', ['volumes: not valid YAML: Map keys must be unique at line 1, column 42']],
    ['YAML aliases', '- &x {name: a, spdkVhostBlkDisk: {bdev: b}}\n- *x', ['volumes: not valid YAML: Alias resolution is disabled']],
    ['a mapping instead of a list', '{}', ['volumes: must be a list, not object']],
    ['empty text', '', ['volumes: must be a list, not null']],
    ['an empty list', '[]', ['volumes: must declare at least one volume']],
    ['27 volumes', Array.from({ length: 27 }, (_, i) => disk(`bdev: b${i}`, `d${i}`)).join('\n'), ['volumes: must declare at most 26 volumes']],
    // the volume
    ['an unknown field on the volume', '- {name: a, disk: {}, spdkVhostBlkDisk: {bdev: b}}', ['volumes[0]: unknown field(s) "disk"']],
    ['no disk', '- {name: a}', ['volumes[0].spdkVhostBlkDisk: is required']],
    ['no name', '- {spdkVhostBlkDisk: {bdev: b}}', ['volumes[0].name: is required']],
    ['a number as name', disk('bdev: b', '7'), ['volumes[0].name: must be a string, not number']],
    ...['A', '-a', 'a-', 'a_b', 'a.b'].map((n): [string, string, string[]] => [
      `name "${n}"`,
      disk('bdev: b', JSON.stringify(n)),
      ['volumes[0].name: must be a DNS-1123 label (lower-case letters, digits and "-", starting and ending alphanumeric)'],
    ]),
    ['a 64-character name', disk('bdev: b', 'a'.repeat(64)), ['volumes[0].name: must be at most 63 characters (DNS-1123 label)']],
    ['duplicate names', `${disk('bdev: b')}\n${disk('bdev: c')}`, ['volumes[1].name: "a" is already used by volumes[0]']],
    // the disk
    ['an unknown disk field', disk('bdev: b, size: 3'), [`${D}: unknown field(s) "size"`]],
    ['two unknown disk fields', disk('bdev: b, size: 3, cache: none'), [`${D}: unknown field(s) "size", "cache"`]],
    ['no source', disk(''), [`${D}: exactly one of image, blank, bdev is required (found none)`]],
    ['two sources', disk('image: x, bdev: b, capacity: 1Gi'), [`${D}: exactly one of image, blank, bdev is required (found image, bdev)`]],
    ['three sources', disk('image: x, blank: {}, bdev: b, capacity: 1Gi'), [`${D}: exactly one of image, blank, bdev is required (found image, blank, bdev)`]],
    ['an image name that is not a label', disk('image: Fedora, capacity: 1Gi'), [`${D}.image: must name a CachedImage (DNS-1123 label)`]],
    ['a blank with fields', disk('blank: {size: 1}, capacity: 1Gi'), [`${D}.blank: unknown field(s) "size"`]],
    ['a null blank', disk('blank: null, capacity: 1Gi'), [`${D}.blank: must be a mapping, not null`]],
    ['a bdev with a space', disk('bdev: "b c"'), [`${D}.bdev: ${BDEV_RULE}`]],
    ['an empty bdev', disk('bdev: ""'), [`${D}.bdev: must be 1 to 255 characters`]],
    ['a 256-character bdev', disk(`bdev: ${'b'.repeat(256)}`), [`${D}.bdev: must be 1 to 255 characters`]],
    // F1: a bdev is a name, never a host path (qemu-storage-daemon would open it read-write as root)
    ...['/etc/shadow', '/dev/sda', '../../etc/shadow', 'a/../b', 'lvs/../../x', './x', '.x', 'a//b', 'a/b/c', 'x/', 'lvs/.x'].map(
      (b): [string, string, string[]] => [`a path-like bdev ${b}`, disk(`bdev: ${JSON.stringify(b)}`), [`${D}.bdev: ${BDEV_RULE}`]],
    ),
    // F12: sizes and durations are bounded (8Ei became a 9.2e18-byte lvol)
    ['capacity 8Ei', disk('blank: {}, capacity: 8Ei'), [`${D}.capacity: 8Ei is larger than the limit of 64Ti`]],
    ['capacity 65Ti', disk('blank: {}, capacity: 65Ti'), [`${D}.capacity: 65Ti is larger than the limit of 64Ti`]],
    ['capacity 1e30', disk('blank: {}, capacity: "1e30"'), [`${D}.capacity: 1e30 is larger than the limit of 64Ti`]],
    ['reconnectTimeout 2h', disk('bdev: b, reconnectTimeout: 2h'), [`${D}.reconnectTimeout: 2h is longer than the limit of 3600s`]],
    ['reconnectTimeout 99999999999999h', disk('bdev: b, reconnectTimeout: 99999999999999h'), [`${D}.reconnectTimeout: 99999999999999h is longer than the limit of 3600s`]],
    // capacity
    ['an image without capacity', disk('image: x'), [`${D}.capacity: is required for image and blank disks`]],
    ['a blank without capacity', disk('blank: {}'), [`${D}.capacity: is required for image and blank disks`]],
    ['capacity 20Gb', disk('image: x, capacity: 20Gb'), [`${D}.capacity: 20Gb is not a Kubernetes quantity (e.g. 20Gi)`]],
    ['capacity 0', disk('image: x, capacity: 0'), [`${D}.capacity: 0 must be greater than 0`]],
    ['capacity 0Gi', disk('image: x, capacity: 0Gi'), [`${D}.capacity: 0Gi must be greater than 0`]],
    ['a negative capacity', disk('image: x, capacity: -1Gi'), [`${D}.capacity: -1Gi is not a Kubernetes quantity (e.g. 20Gi)`]],
    ['a list as capacity', disk('image: x, capacity: [1]'), [`${D}.capacity: must be a Kubernetes quantity such as 20Gi, not a list`]],
    // reconnectInterval
    ['reconnectInterval 0s', disk('bdev: b, reconnectInterval: 0s'), [`${D}.reconnectInterval: 0s must be greater than 0`]],
    ['reconnectInterval 0', disk('bdev: b, reconnectInterval: "0"'), [`${D}.reconnectInterval: 0 must be greater than 0`]],
    ['reconnectInterval without unit', disk('bdev: b, reconnectInterval: 10'), [`${D}.reconnectInterval: must be a duration with a unit such as 10s`]],
    ['reconnectInterval in words', disk('bdev: b, reconnectInterval: ten'), [`${D}.reconnectInterval: ten is not a duration (e.g. 10s)`]],
    ['a negative reconnectInterval', disk('bdev: b, reconnectInterval: -1s'), [`${D}.reconnectInterval: -1s is not a duration (e.g. 10s)`]],
    ['a fractional reconnectInterval', disk('bdev: b, reconnectInterval: 1.5s'), [`${D}.reconnectInterval: 1.5s must be a whole number of seconds (libvirt reconnect timeout)`]],
    // queues
    ['queues 0', disk('bdev: b, queues: 0'), [`${D}.queues: must be >= 1`]],
    ['queues 257', disk('bdev: b, queues: 257'), [`${D}.queues: must be <= 256`]],
    ['fractional queues', disk('bdev: b, queues: 1.5'), [`${D}.queues: must be an integer`]],
    ['queues as a string', disk('bdev: b, queues: "4"'), [`${D}.queues: must be a number, not string`]],
    // bootOrder, readonly
    ['bootOrder 0', disk('bdev: b, bootOrder: 0'), [`${D}.bootOrder: must be >= 1`]],
    ['a fractional bootOrder', disk('bdev: b, bootOrder: 1.5'), [`${D}.bootOrder: must be an integer`]],
    ['a duplicate bootOrder', `${disk('bdev: b, bootOrder: 1')}\n${disk('bdev: d, bootOrder: 1', 'c')}`, ['volumes[1].spdkVhostBlkDisk.bootOrder: 1 is already used by volumes[0]']],
    ['readonly "yes"', disk('bdev: b, readonly: "yes"'), [`${D}.readonly: must be true or false, not string`]],
    // several problems at once are all reported
    ['two bad fields', disk('bdev: b, queues: 0, reconnectInterval: 0s'), [`${D}.queues: must be >= 1`, `${D}.reconnectInterval: 0s must be greater than 0`]],
    [
      'problems in two volumes',
      `${disk('bdev: b, queues: 0')}\n${disk('blank: {}', 'c')}`,
      [`${D}.queues: must be >= 1`, 'volumes[1].spdkVhostBlkDisk.capacity: is required for image and blank disks'],
    ],
  ];

  it.each(cases)('%s', (_what, text, expected) => {
    expect(problems(text)).toEqual(expected);
  });

  it('uses the prefix it is given, and joins the problems into the error message', () => {
    let err: unknown;
    try {
      parseVolumesAnnotation(disk('bdev: b, queues: 0, readonly: 1'), 'spec.template.volumes');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as Error).message).toBe(
      'spec.template.volumes[0].spdkVhostBlkDisk.queues: must be >= 1; spec.template.volumes[0].spdkVhostBlkDisk.readonly: must be true or false, not number',
    );
  });
});
