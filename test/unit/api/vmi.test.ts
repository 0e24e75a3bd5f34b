import { describe, expect, it } from 'vitest';
import { parseCachedImages } from '../../../src/api/cachedimage.js';
import { formatBytes, parseDuration, parseQuantity } from '../../../src/api/quantity.js';
import { hasSpdkVolumes, parseVmi, parseVmiYaml, slotOf, spdkVolumesOf, vcpuCount, vmiUid } from '../../../src/api/vmi.js';
import { problemsOf } from '../../helpers/validation.js';

const ANN = 'kubevirt-spdk.io/volumes';
const P = `metadata.annotations["${ANN}"]`;

const vmiYaml = (volumes: string, extra = ''): string => `
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: vm1
  annotations:
    ${ANN}: |
${volumes
  .split('\n')
  .map((l) => `      ${l}`)
  .join('\n')}
spec:
  domain:
    devices:
      disks:
        - name: containerdisk
          disk: {bus: virtio}
${extra}
  volumes:
    - name: containerdisk
      containerDisk: {image: x}
    - name: cloudinit
      cloudInitNoCloud: {userData: "#cloud-config"}
`;

describe('the VMI as we read it', () => {
  it('keeps everything KubeVirt owns and fills our defaults', () => {
    const vmi = parseVmiYaml(vmiYaml('- {name: data, spdkVhostBlkDisk: {bdev: b}}'));
    expect(vmi.metadata.namespace).toBe('default');
    expect(vmi.metadata.labels).toEqual({});
    expect(vmi.spec.volumes[0]).toEqual({ name: 'containerdisk', containerDisk: { image: 'x' } });
    expect(vmi.spec.domain.devices.disks[0]).toEqual({ name: 'containerdisk', disk: { bus: 'virtio' } });
    expect(hasSpdkVolumes(vmi)).toBe(true);
    expect(spdkVolumesOf(vmi).map((v) => v.name)).toEqual(['data']);
    expect(vmiUid(vmi)).toBe('standalone-default-vm1');
  });

  it('a VMI without the annotation has no SPDK volumes', () => {
    const vmi = parseVmi({ metadata: { name: 'x', uid: 'u-1' } });
    expect(hasSpdkVolumes(vmi)).toBe(false);
    expect(spdkVolumesOf(vmi)).toEqual([]);
    expect(vmiUid(vmi)).toBe('u-1');
  });

  it.each([
    ['containerdisk', 'a disk of the VMI'],
    ['cloudinit', 'a volume of the VMI'],
  ])('rejects a volume named like %s (%s)', (name) => {
    const vmi = parseVmiYaml(vmiYaml(`- {name: ok, spdkVhostBlkDisk: {bdev: b}}\n- {name: ${name}, spdkVhostBlkDisk: {bdev: c}}`));
    expect(problemsOf(() => spdkVolumesOf(vmi))).toEqual([`${P}[1].name: "${name}" clashes with a disk or volume of the VMI itself`]);
  });

  it('reports annotation problems under the annotation\'s path', () => {
    const vmi = parseVmiYaml(vmiYaml('- {name: a, spdkVhostBlkDisk: {bdev: b, queues: 300}}'));
    expect(problemsOf(() => spdkVolumesOf(vmi))).toEqual([`${P}[0].spdkVhostBlkDisk.queues: must be <= 256`]);
  });

  it.each([
    [undefined, 1],
    [{ cores: 4 }, 4],
    [{ cores: 2, sockets: 2, threads: 2 }, 8],
    [{ sockets: 3 }, 3],
    [{ cores: 0 }, 1],
  ])('vCPUs of cpu %j is %d', (cpu, n) => {
    expect(vcpuCount(parseVmi({ metadata: { name: 'x' }, spec: { domain: cpu ? { cpu } : {} } }))).toBe(n);
  });

  it('names the field and the rule for a broken VMI', () => {
    expect(problemsOf(() => parseVmi({ metadata: {} }))).toEqual(['vmi.metadata.name: is required']);
    expect(problemsOf(() => parseVmi({ metadata: { name: 'x', annotations: { a: 1 } } }))).toEqual(['vmi.metadata.annotations.a: must be a string, not number']);
    expect(problemsOf(() => parseVmi({ metadata: { name: 'x' }, spec: { volumes: {} } }, 'f.yaml'))).toEqual(['f.yaml.spec.volumes: must be a list, not object']);
    expect(problemsOf(() => parseVmi([]))).toEqual(['vmi: must be a mapping, not array']);
    expect(problemsOf(() => parseVmiYaml('metadata: {name: x\n'))[0]).toMatch(/^vmi: not valid YAML: /);
  });

  it('reads the standalone slot annotation and checks its form', () => {
    const withSlot = (slot: string) => parseVmi({ metadata: { name: 'x', annotations: { 'kubevirt-spdk.io/slot': slot } } });
    expect(slotOf(withSlot('slot-07'))).toBe('slot-07');
    expect(slotOf(parseVmi({ metadata: { name: 'x' } }))).toBeUndefined();
    expect(problemsOf(() => slotOf(withSlot('7')))).toEqual(['metadata.annotations["kubevirt-spdk.io/slot"]: "7" must look like slot-07']);
  });
});

describe('quantities and durations', () => {
  it.each([
    ['1Ki', 1024],
    ['1k', 1000],
    ['1.5Mi', 1.5 * 2 ** 20],
    ['2E3', 2000],
    [' 4Gi ', 4 * 2 ** 30],
    ['1Gb', undefined],
    ['Gi', undefined],
    ['', undefined],
  ])('quantity %j is %s', (text, bytes) => expect(parseQuantity(text)).toBe(bytes));

  it.each([
    ['10s', 10_000],
    ['1m30s', 90_000],
    ['1.5h', 5_400_000],
    ['250ms', 250],
    ['0', 0],
    ['10', undefined],
    ['1d', undefined],
    ['s', undefined],
    ['', undefined],
  ])('duration %j is %s ms', (text, ms) => expect(parseDuration(text)).toBe(ms));

  it('formats bytes with the largest exact binary suffix', () => {
    expect([4 * 2 ** 30, 1536 * 2 ** 20, 1000].map(formatBytes)).toEqual(['4Gi', '1536Mi', '1000']);
  });
});

describe('CachedImage documents', () => {
  const image = (name: string, spec: string) => `apiVersion: kubevirt-spdk.io/v1alpha1\nkind: CachedImage\nmetadata: {name: ${name}}\nspec: ${spec}\n`;
  const SHA = 'a'.repeat(64);

  it('reads a YAML stream and a List, with size in bytes', () => {
    const text = `${image('fedora-40', `{source: {http: {url: "https://x/f.raw", sha256: "${SHA}"}}, size: 4Gi}`)}---\nkind: List\nitems:\n  - ${JSON.stringify({
      apiVersion: 'kubevirt-spdk.io/v1alpha1',
      kind: 'CachedImage',
      metadata: { name: 'dev' },
      spec: { source: { hostPath: { path: '/images/dev.qcow2' } }, format: 'qcow2' },
    })}\n`;
    const imgs = parseCachedImages(text);
    expect(imgs.map((i) => [i.metadata.name, i.spec.format, i.spec.size])).toEqual([
      ['fedora-40', 'raw', 4 * 2 ** 30],
      ['dev', 'qcow2', undefined],
    ]);
  });

  it('names the document and field of each problem', () => {
    const text = `${image('Bad_Name', `{source: {hostPath: {path: rel}}, size: 0}`)}---\n${image('ok', `{source: {http: {url: "https://x", sha256: "${SHA}"}}, extra: 1}`)}`;
    expect(problemsOf(() => parseCachedImages(text, 'images.yaml'))).toEqual([
      'images.yaml[0].metadata.name: must be a DNS-1123 label',
      'images.yaml[0].spec.source.hostPath.path: must be an absolute path',
      'images.yaml[0].spec.size: 0 is not a positive Kubernetes quantity',
      'images.yaml[1].spec: unknown field(s) "extra"',
    ]);
  });
});
