import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { create } from 'xmlbuilder2';
import type { XMLBuilder } from 'xmlbuilder2/lib/interfaces.js';
import type { Element } from '@oozcitak/dom/lib/dom/interfaces.js';
import { ValidationError } from '../../../src/api/errors.js';
import { parseVmi, type Vmi } from '../../../src/api/vmi.js';
import { ConvertError, convertDomain } from '../../../src/converter/index.js';
import { KUBEVIRT_DEVICE_INDEX_LIMIT, diskTargetName, ourTargetNames } from '../../../src/converter/devnames.js';
import { expectValidDomain, haveVirtXmlValidate } from './virt-xml-validate.js';

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../fixtures/converter');
const fixture = (name: string): string => readFileSync(path.join(FIXTURES, name), 'utf8');
const Q35 = fixture('kubevirt-q35.xml');
const HUGEPAGES = fixture('kubevirt-hugepages.xml');
const MINIMAL = fixture('minimal.xml');

/** Compares with test/fixtures/converter/golden/NAME; UPDATE_GOLDEN=1 rewrites the file. */
function expectGolden(name: string, actual: string): void {
  const file = path.join(FIXTURES, 'golden', name);
  if (process.env.UPDATE_GOLDEN) writeFileSync(file, actual);
  expect(actual).toBe(readFileSync(file, 'utf8'));
}

type VolumeSpec = Record<string, unknown>;

function vmiWith(volumes: Array<{ name: string } & VolumeSpec> | undefined, cpu: Record<string, number> = { cores: 2 }): Vmi {
  const annotations: Record<string, string> = {};
  if (volumes) {
    annotations['kubevirt-spdk.io/volumes'] = JSON.stringify(
      volumes.map(({ name, ...disk }) => ({ name, spdkVhostBlkDisk: disk })),
    );
  }
  return parseVmi({
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'vmi-fedora', namespace: 'default', annotations },
    spec: {
      domain: { cpu, devices: { disks: [{ name: 'containerdisk' }, { name: 'cloudinitdisk' }] } },
      volumes: [{ name: 'containerdisk' }, { name: 'cloudinitdisk' }],
    },
  });
}

const ROOT_AND_DATA = [
  { name: 'rootdisk', image: 'fedora-40', capacity: '20Gi', bootOrder: 1 },
  { name: 'data', blank: {}, capacity: '1Gi', queues: 4, reconnectInterval: '1m' },
];

/** An attribute of the first child element named `child` of a parsed node. */
function childAttr(parent: XMLBuilder, child: string, attr: string): string | undefined {
  const node = parent.find((n) => n.node.nodeName === child)?.node as Element | undefined;
  return node?.getAttribute(attr) ?? undefined;
}

/** Parsed output: our disks and the memoryBacking children, for assertions on structure. */
function inspect(xml: string) {
  const obj = create(xml).root();
  const disks = obj.filter((n) => n.node.nodeName === 'disk', false, true).map((d) => ({
    alias: childAttr(d, 'alias', 'name'),
    dev: childAttr(d, 'target', 'dev'),
    xml: d.toString(),
  }));
  const backing = obj.find((n) => n.node.nodeName === 'memoryBacking');
  const backingChildren = backing ? backing.filter(() => true).map((c) => c.toString()) : [];
  return { disks, ours: disks.filter((d) => d.alias?.startsWith('ua-spdk-')), backingChildren };
}

/** The domain without our disks and memoryBacking, whitespace-normalised: "everything else". */
function withoutOurs(xml: string, dropBacking: boolean): string {
  const doc = create(xml);
  for (const d of doc.root().filter((n) => n.node.nodeName === 'disk', false, true)) {
    if (childAttr(d, 'alias', 'name')?.startsWith('ua-spdk-')) d.remove();
  }
  if (dropBacking) doc.root().find((n) => n.node.nodeName === 'memoryBacking')?.remove();
  return doc.end({ headless: true, prettyPrint: true });
}

function volumes(n: number): Array<{ name: string } & VolumeSpec> {
  return Array.from({ length: n }, (_, i) => {
    const name = `disk${i + 1}`;
    if (i % 3 === 0) return { name, image: 'fedora-40', capacity: '20Gi', ...(i === 0 ? { bootOrder: 1 } : {}) };
    if (i % 3 === 1) return { name, blank: {}, capacity: `${i}Gi`, queues: i };
    return { name, bdev: `nvme0n1p${i}`, readonly: true, reconnectInterval: `${i}s` };
  });
}

describe('convertDomain: golden files', () => {
  for (let n = 1; n <= 8; n++) {
    describe(`${n} disk(s) on a minimal q35 domain`, () => {
      const out = convertDomain(MINIMAL, vmiWith(volumes(n), { cores: 2, sockets: 2 }));
      it('matches the golden file', () => expectGolden(`minimal-${n}-disks.xml`, out));
      it('adds exactly one vhostuser disk per volume, on vdzzz downwards, with the default queues = vCPUs', () => {
        const { ours } = inspect(out);
        expect(ours.map((d) => d.alias)).toEqual(volumes(n).map((v) => `ua-spdk-${v.name}`));
        expect(ours.map((d) => d.dev)).toEqual(Array.from({ length: n }, (_, i) => diskTargetName('vd', 18277 - i)));
        expect(ours[0]?.xml).toContain('queues="4"');
      });
      it('is idempotent', () => expect(convertDomain(out, vmiWith(volumes(n), { cores: 2, sockets: 2 }))).toBe(out));
      it.skipIf(!haveVirtXmlValidate)('passes virt-xml-validate (needs libvirt-clients + xmllint)', () => expectValidDomain(out));
    });
  }

  describe('KubeVirt-like q35 domain with its own virtio disks and cloud-init', () => {
    const vmi = vmiWith(ROOT_AND_DATA);
    const out = convertDomain(Q35, vmi);
    it('matches the golden file', () => expectGolden('kubevirt-q35.xml', out));
    it.skipIf(!haveVirtXmlValidate)('passes virt-xml-validate (needs libvirt-clients + xmllint)', () => expectValidDomain(out));
    it('names our disks from the top (vdzzz, vdzzy), out of reach of KubeVirt\'s vda, vdb and its hot-plugs', () => {
      const { disks, ours } = inspect(out);
      expect(disks.map((d) => [d.alias, d.dev])).toEqual([
        ['ua-containerdisk', 'vda'],
        ['ua-cloudinitdisk', 'vdb'],
        ['ua-spdk-rootdisk', 'vdzzz'],
        ['ua-spdk-data', 'vdzzy'],
      ]);
      expect(ours[0]?.xml).toContain('<source type="unix" path="/var/run/kubevirt-spdk/rootdisk"><reconnect enabled="yes" timeout="1"/></source>');
      expect(ours[0]?.xml).toContain('<boot order="1"/>');
      expect(ours[0]?.xml).toContain('<driver name="qemu" type="raw" queues="2"/>');
      expect(ours[1]?.xml).toContain('<reconnect enabled="yes" timeout="60"/>');
      expect(ours[1]?.xml).toContain('queues="4"');
      expect(ours[1]?.xml).not.toContain('<boot');
    });
    it('adds shared memfd memory', () => {
      expect(inspect(out).backingChildren).toEqual(['<source type="memfd"/>', '<access mode="shared"/>']);
    });
    it('leaves everything else as it was: elements, attributes, order, escapes, namespaces, qemu:commandline', () => {
      expect(withoutOurs(out, true)).toBe(withoutOurs(Q35, true));
      expect(out).toContain('<domain type="kvm" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">');
      expect(out).toContain('<qemu:arg value="name=opt/kubevirt/test,string=a&lt;b"/>');
      expect(out).toContain('<qemu:env name="SPDK_HOOK_TEST" value="kept &amp; escaped"/>');
      expect(out).toContain('<kubevirt xmlns="http://kubevirt.io">');
    });
  });

  describe('domain with hugepages', () => {
    const out = convertDomain(HUGEPAGES, vmiWith(ROOT_AND_DATA));
    it('matches the golden file', () => expectGolden('kubevirt-hugepages.xml', out));
    it.skipIf(!haveVirtXmlValidate)('passes virt-xml-validate (needs libvirt-clients + xmllint)', () => expectValidDomain(out));
    it('keeps hugepages and locked, and adds memfd + shared in libvirt\'s order', () => {
      expect(inspect(out).backingChildren).toEqual([
        '<hugepages><page size="2048" unit="KiB"/></hugepages>',
        '<locked/>',
        '<source type="memfd"/>',
        '<access mode="shared"/>',
      ]);
      expect(withoutOurs(out, false).replace(/\s*<source type="memfd"\/>\s*<access mode="shared"\/>/, '')).toBe(withoutOurs(HUGEPAGES, false));
    });
  });
});

describe('convertDomain: idempotence (OnDefineDomain twice at boot on q35)', () => {
  const vmi = vmiWith(ROOT_AND_DATA);
  const first = convertDomain(Q35, vmi);

  it('applying it to its own output changes nothing', () => {
    expect(convertDomain(first, vmi)).toBe(first);
  });

  it('rebuilds our disk when KubeVirt hands it back without <source>, re-indented with tabs', () => {
    // KubeVirt re-marshals its Go structs, which know no vhostuser source, with MarshalIndent("\t").
    const handedBack = first
      .replace(/<source type="unix" path="[^"]*">\s*<reconnect[^>]*\/>\s*<\/source>/g, '<source></source>')
      .replace(/^( {2})+/gm, (m) => '\t'.repeat(m.length / 2));
    expect(handedBack).not.toContain('path="/var/run/kubevirt-spdk/');
    const second = convertDomain(handedBack, vmi);
    expect(second).toBe(first);
    expect(inspect(second).ours).toHaveLength(2);
  });

  it('drops our disks that the VMI no longer declares', () => {
    const out = convertDomain(first, vmiWith([ROOT_AND_DATA[0] as { name: string }]));
    expect(inspect(out).ours.map((d) => d.alias)).toEqual(['ua-spdk-rootdisk']);
  });

  it('holds for any set of volumes (property)', () => {
    const volumeArb = fc.record({
      queues: fc.option(fc.integer({ min: 1, max: 256 }), { nil: undefined }),
      reconnect: fc.integer({ min: 1, max: 600 }),
      kind: fc.constantFrom('image', 'blank', 'bdev'),
    });
    fc.assert(
      fc.property(fc.array(volumeArb, { minLength: 1, maxLength: 12 }), fc.constantFrom(Q35, HUGEPAGES, MINIMAL), fc.integer({ min: 1, max: 64 }), (vols, domain, cores) => {
        const specs = vols.map((v, i) => ({
          name: `v${i}`,
          ...(v.kind === 'image' ? { image: 'img', capacity: '1Gi' } : v.kind === 'blank' ? { blank: {}, capacity: '1Gi' } : { bdev: 'b0' }),
          ...(v.queues === undefined ? {} : { queues: v.queues }),
          reconnectInterval: `${v.reconnect}s`,
        }));
        const vmi = vmiWith(specs, { cores });
        const once = convertDomain(domain, vmi);
        expect(convertDomain(once, vmi)).toBe(once);
        const { ours } = inspect(once);
        expect(ours).toHaveLength(specs.length);
        expect(new Set(inspect(once).disks.map((d) => d.dev)).size).toBe(inspect(once).disks.length);
      }),
      { numRuns: 40 },
    );
  });
});

describe('convertDomain: boot order', () => {
  const withBoot = Q35.replace('<alias name="ua-containerdisk"></alias>', '<alias name="ua-containerdisk"></alias>\n      <boot order="1"></boot>');

  it('errors when our bootOrder is already used by a device of the domain', () => {
    expect(() => convertDomain(withBoot, vmiWith(ROOT_AND_DATA))).toThrow(ConvertError);
    expect(() => convertDomain(withBoot, vmiWith(ROOT_AND_DATA))).toThrow(
      'metadata.annotations["kubevirt-spdk.io/volumes"][0].spdkVhostBlkDisk.bootOrder: 1 is already used by <disk dev="vda" alias="ua-containerdisk"> in the domain',
    );
  });

  it.skipIf(!haveVirtXmlValidate)('accepts a free boot order next to the domain\'s own (validated by virt-xml-validate)', async () => {
    const out = convertDomain(withBoot, vmiWith([{ name: 'rootdisk', image: 'fedora-40', capacity: '20Gi', bootOrder: 2 }]));
    expect(inspect(out).ours[0]?.xml).toContain('<boot order="2"/>');
    await expectValidDomain(out);
  });

  it('does not count our own earlier disk as a conflict', () => {
    const vmi = vmiWith(ROOT_AND_DATA);
    const once = convertDomain(Q35, vmi);
    expect(convertDomain(once, vmi)).toBe(once);
  });

  const osBoot = Q35.replace('<smbios mode="sysinfo"></smbios>', '<boot dev="hd"></boot>\n    <smbios mode="sysinfo"></smbios>');

  it('errors when the domain boots by <os><boot dev>, which libvirt forbids mixing with per-device order', () => {
    expect(() => convertDomain(osBoot, vmiWith(ROOT_AND_DATA))).toThrow(
      'metadata.annotations["kubevirt-spdk.io/volumes"][0].spdkVhostBlkDisk.bootOrder: the domain boots by <os><boot dev="hd"/> and libvirt forbids mixing that with per-device boot order',
    );
  });

  it.skipIf(!haveVirtXmlValidate)('leaves <os><boot dev> alone when no volume asks for a boot order', async () => {
    const out = convertDomain(osBoot, vmiWith([{ name: 'data', blank: {}, capacity: '1Gi' }]));
    expect(out).toContain('<boot dev="hd"/>');
    expect(inspect(out).ours[0]?.xml).not.toContain('<boot');
    await expectValidDomain(out);
  });
});

describe('convertDomain: details', () => {
  it('picks target names that do not collide, skipping taken ones and ignoring other buses\' prefixes', () => {
    const domain = MINIMAL.replace(
      '<serial type="pty"/>',
      ['vda', 'vdzzy', 'sdzzz'].map((dev) => `<disk type="file" device="disk"><source file="/img/${dev}"/><target dev="${dev}" bus="${dev.startsWith('sd') ? 'sata' : 'virtio'}"/></disk>`).join('') + '<serial type="pty"/>',
    );
    const out = convertDomain(domain, vmiWith(volumes(3)));
    expect(inspect(out).ours.map((d) => d.dev)).toEqual(['vdzzz', 'vdzzx', 'vdzzw']);
  });

  /**
   * KubeVirt's rule (virt-launcher converter, MakeDeviceName): a disk keeps the target in the
   * VMI's volume status; a new one (hot-plug) takes the lowest index i < 26^3 whose name no
   * VMI disk holds. It never sees our disks, so only names outside its range are safe.
   */
  function kubevirtHotplugNames(vmiTargets: string[], hotplugs: number): string[] {
    const used = new Set(vmiTargets);
    const out: string[] = [];
    for (let h = 0; h < hotplugs; h++) {
      for (let i = 0; i < 26 * 26 * 26; i++) {
        const name = diskTargetName('vd', i);
        if (!used.has(name)) {
          used.add(name);
          out.push(name);
          break;
        }
      }
    }
    return out;
  }

  it('no hot-plugged KubeVirt disk can get one of our target names (KubeVirt\'s naming rule)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 1, max: 26 }), fc.integer({ min: 0, max: 60 }), (own, n, hotplugs) => {
        const ownTargets = Array.from({ length: own }, (_, i) => diskTargetName('vd', i));
        const domain = MINIMAL.replace(
          '<serial type="pty"/>',
          ownTargets.map((dev, i) => `<disk type="file" device="disk"><source file="/img/${i}"/><target dev="${dev}" bus="virtio"/><alias name="ua-own${i}"/></disk>`).join('') + '<serial type="pty"/>',
        );
        const ours = inspect(convertDomain(domain, vmiWith(volumes(n)))).ours.map((d) => d.dev);
        const hot = kubevirtHotplugNames(ownTargets, hotplugs);
        expect(hot.filter((h) => ours.includes(h))).toEqual([]);
      }),
      { numRuns: 60 },
    );
    // Whatever KubeVirt allocates stays below index 26^3; ours all lie above it.
    const indexOf = (name: string): number => [...name.slice(2)].reduce((n, c) => n * 26 + (c.charCodeAt(0) - 96), 0) - 1;
    expect(indexOf('vda')).toBe(0);
    expect(indexOf(diskTargetName('vd', KUBEVIRT_DEVICE_INDEX_LIMIT - 1))).toBe(KUBEVIRT_DEVICE_INDEX_LIMIT - 1);
    expect(ourTargetNames('vd', new Set(), 26).map(indexOf).filter((i) => i < KUBEVIRT_DEVICE_INDEX_LIMIT)).toEqual([]);
  });

  it('keeps a user\'s own disk named spdk-* (only vhostuser disks with our alias are ours)', () => {
    const own = '<disk type="file" device="disk"><driver name="qemu" type="raw"/><source file="/var/run/kubevirt-private/vmi-disks/spdk-scratch/disk.img"/><target dev="vdb" bus="virtio"/><alias name="ua-spdk-scratch"/></disk>';
    const domain = MINIMAL.replace('<serial type="pty"/>', `${own}<serial type="pty"/>`);
    const out = convertDomain(domain, vmiWith([{ name: 'rootdisk', blank: {}, capacity: '1Gi' }]));
    expect(inspect(out).disks.map((d) => [d.alias, d.dev])).toEqual([
      ['ua-spdk-scratch', 'vdb'],
      ['ua-spdk-rootdisk', 'vdzzz'],
    ]);
    expect(convertDomain(out, vmiWith([{ name: 'rootdisk', blank: {}, capacity: '1Gi' }]))).toBe(out);
  });

  it('refuses a volume whose alias a device of the domain already holds', () => {
    const own = '<disk type="file" device="disk"><source file="/img/x"/><target dev="vdb" bus="virtio"/><alias name="ua-spdk-scratch"/></disk>';
    const domain = MINIMAL.replace('<serial type="pty"/>', `${own}<serial type="pty"/>`);
    expect(() => convertDomain(domain, vmiWith([{ name: 'scratch', blank: {}, capacity: '1Gi' }]))).toThrow(
      'metadata.annotations["kubevirt-spdk.io/volumes"][0].name: "scratch" needs the alias "ua-spdk-scratch", already used by <disk dev="vdb" alias="ua-spdk-scratch"> in the domain',
    );
  });

  it('refuses a volume named like a VMI disk that KubeVirt will alias the same (spdk-<name>)', () => {
    const vmi = parseVmi({
      metadata: { name: 'v', annotations: { 'kubevirt-spdk.io/volumes': '[{"name":"scratch","spdkVhostBlkDisk":{"blank":{},"capacity":"1Gi"}}]' } },
      spec: { domain: { devices: { disks: [{ name: 'spdk-scratch' }] } }, volumes: [{ name: 'spdk-scratch' }] },
    });
    expect(() => convertDomain(MINIMAL, vmi)).toThrow(
      'metadata.annotations["kubevirt-spdk.io/volumes"][0].name: "scratch" clashes with the VMI\'s own disk or volume "spdk-scratch" (both would get the libvirt alias "ua-spdk-scratch")',
    );
  });

  describe('kubevirt.io/memfd: "false" (hugepages without memfd)', () => {
    const noMemfd = (vmi: Vmi): Vmi => ({ ...vmi, metadata: { ...vmi.metadata, annotations: { ...vmi.metadata.annotations, 'kubevirt.io/memfd': 'false' } } });
    // What KubeVirt emits for hugepages when memfd is off: hugepages, no source.
    const domain = MINIMAL.replace('<vcpu', '<memoryBacking><hugepages><page size="2048" unit="KiB"/></hugepages></memoryBacking><vcpu');
    it('keeps KubeVirt\'s hugepages without memfd and makes the memory shared', () => {
      const out = convertDomain(domain, noMemfd(vmiWith([{ name: 'rootdisk', blank: {}, capacity: '1Gi' }])));
      expect(inspect(out).backingChildren).toEqual(['<hugepages><page size="2048" unit="KiB"/></hugepages>', '<access mode="shared"/>']);
      expect(convertDomain(out, noMemfd(vmiWith([{ name: 'rootdisk', blank: {}, capacity: '1Gi' }])))).toBe(out);
    });
    it.skipIf(!haveVirtXmlValidate)('passes virt-xml-validate', () => {
      expectValidDomain(convertDomain(domain, noMemfd(vmiWith([{ name: 'rootdisk', blank: {}, capacity: '1Gi' }]))));
    });
    it('without the annotation, memfd as before', () => {
      const out = convertDomain(domain, vmiWith([{ name: 'rootdisk', blank: {}, capacity: '1Gi' }]));
      expect(inspect(out).backingChildren).toEqual(['<hugepages><page size="2048" unit="KiB"/></hugepages>', '<source type="memfd"/>', '<access mode="shared"/>']);
    });
    it('anonymous memory has no fd to share: its source goes, libvirt picks a file', () => {
      const anon = MINIMAL.replace('<vcpu', '<memoryBacking><source type="anonymous"/><access mode="private"/></memoryBacking><vcpu');
      const out = convertDomain(anon, noMemfd(vmiWith([{ name: 'rootdisk', blank: {}, capacity: '1Gi' }])));
      expect(inspect(out).backingChildren).toEqual(['<access mode="shared"/>']);
    });
  });

  it('default queues are the VMI\'s vCPUs (cores x sockets x threads), capped at 256', () => {
    const one = [{ name: 'd', blank: {}, capacity: '1Gi' }];
    expect(inspect(convertDomain(MINIMAL, vmiWith(one, { cores: 3, sockets: 2, threads: 2 }))).ours[0]?.xml).toContain('queues="12"');
    expect(inspect(convertDomain(MINIMAL, vmiWith(one, {}))).ours[0]?.xml).toContain('queues="1"');
    expect(inspect(convertDomain(MINIMAL, vmiWith(one, { cores: 300 }))).ours[0]?.xml).toContain('queues="256"');
    expect(inspect(convertDomain(MINIMAL, vmiWith([{ name: 'd', blank: {}, capacity: '1Gi', queues: 3 }], { cores: 300 }))).ours[0]?.xml).toContain('queues="3"');
  });

  it('never emits <readonly/> for a readonly volume (libvirt refuses it on vhostuser; SPDK enforces it)', () => {
    const out = convertDomain(Q35, vmiWith([{ name: 'ro', bdev: 'shared0', readonly: true }]));
    expect(inspect(out).ours).toHaveLength(1);
    expect(inspect(out).ours[0]?.xml).not.toContain('readonly');
  });

  it('uses --socket-dir for the socket path, normalised', () => {
    const out = convertDomain(MINIMAL, vmiWith(volumes(1)), { socketDir: '/run/spdk//slot-07/' });
    expect(out).toContain('path="/run/spdk/slot-07/disk1"');
  });

  it('rejects a relative socket directory and a socket path over the unix limit', () => {
    expect(() => convertDomain(MINIMAL, vmiWith(volumes(1)), { socketDir: 'run/spdk' })).toThrow('socketDir: "run/spdk" must be an absolute path');
    const long = `/${'d'.repeat(60)}`;
    const name = 'n'.repeat(50);
    expect(() => convertDomain(MINIMAL, vmiWith([{ name, bdev: 'b' }]), { socketDir: long })).toThrow(
      `metadata.annotations["kubevirt-spdk.io/volumes"][0].name: socket path ${long}/${name} is longer than 107 bytes (unix socket limit)`,
    );
  });

  it('creates <devices> when the domain has none, and <memoryBacking> after <memory>', () => {
    const bare = '<domain type="qemu"><name>x</name><memory unit="MiB">64</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>';
    const out = convertDomain(bare, vmiWith(volumes(1)));
    expect(out.indexOf('<memoryBacking>')).toBeGreaterThan(out.indexOf('</memory>'));
    expect(out.indexOf('<memoryBacking>')).toBeLessThan(out.indexOf('<vcpu>'));
    expect(inspect(out).ours).toHaveLength(1);
  });

  it('makes existing memory sharing fit for vhost-user: private -> shared, anonymous -> memfd, file kept', () => {
    const withBacking = (inner: string): string => MINIMAL.replace('<vcpu>', `<memoryBacking>${inner}</memoryBacking>\n  <vcpu>`);
    const backing = (inner: string): string[] => inspect(convertDomain(withBacking(inner), vmiWith(volumes(1)))).backingChildren;
    expect(backing('<access mode="private"/><source type="anonymous"/>')).toEqual(['<access mode="shared"/>', '<source type="memfd"/>']);
    expect(backing('<source type="file"/><discard/>')).toEqual(['<source type="file"/>', '<access mode="shared"/>', '<discard/>']);
  });

  it('rejects NUMA cells with private memory access', () => {
    const numa = MINIMAL.replace(
      '<vcpu>4</vcpu>',
      '<vcpu>4</vcpu><cpu><numa><cell id="0" cpus="0-3" memory="256" unit="MiB" memAccess="private"/></numa></cpu>',
    );
    expect(() => convertDomain(numa, vmiWith(volumes(1)))).toThrow(
      'domain XML: <cpu><numa><cell id="0" memAccess="private"> cannot be used with vhost-user disks, which need shared guest memory',
    );
  });

  it('keeps comments and processing instructions', () => {
    const out = convertDomain(MINIMAL.replace('<devices>', '<!-- keep me --><devices>'), vmiWith(volumes(1)));
    expect(out).toContain('<!-- keep me -->');
  });

  it('returns the domain byte for byte for a VMI without the annotation', () => {
    const odd = '<domain type="qemu">\n\t<name>x</name>   <!-- spacing kept --></domain>';
    expect(convertDomain(odd, vmiWith(undefined))).toBe(odd);
  });

  it('reports a bad annotation as a ValidationError naming the field', () => {
    let err: unknown;
    try {
      convertDomain(Q35, vmiWith([{ name: 'rootdisk', image: 'fedora-40' }]));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as ValidationError).problems).toEqual([
      'metadata.annotations["kubevirt-spdk.io/volumes"][0].spdkVhostBlkDisk.capacity: is required for image and blank disks',
    ]);
  });
});

describe('convertDomain: malformed domains', () => {
  const vmi = vmiWith(volumes(1));
  const cases: Array<[string, string, string]> = [
    ['empty input', '', 'domain XML: not well-formed XML at line 1, column 1: document must contain a root element.'],
    ['plain text', 'hello', 'domain XML: not well-formed XML at line 1, column 6: text data outside of root node.'],
    ['mismatched closing tag', '<domain>\n  <name>x</domain>', 'domain XML: not well-formed XML at line 2, column 19: unexpected close tag.'],
    ['unclosed root', '<domain><name>x</name>', 'domain XML: not well-formed XML at line 1, column 23: unclosed tag: domain'],
    ['truncated tag', '<domain', 'domain XML: not well-formed XML at line 1, column 8: document must contain a root element.'],
    ['duplicate attribute', '<domain type="kvm" type="qemu"/>', 'domain XML: not well-formed XML at line 1, column 33: duplicate attribute: type.'],
    ['unknown entity', '<domain><name>a &nbsp; b</name></domain>', 'domain XML: not well-formed XML at line 1, column 23: undefined entity.'],
    ['two roots', '<domain/><domain/>', 'domain XML: not well-formed XML at line 1, column 18: documents may contain only one root.'],
    ['text after the root', '<domain/>x', 'domain XML: not well-formed XML at line 1, column 11: text data outside of root node.'],
    ['DOCTYPE (entity expansion)', '<!DOCTYPE d [<!ENTITY a "b">]><domain/>', 'domain XML: not well-formed XML at line 1, column 31: DOCTYPE and other declarations are not allowed'],
    ['unquoted attribute', '<domain type=kvm/>', 'domain XML: not well-formed XML at line 1, column 15: unquoted attribute value.'],
    ['"<" in an attribute', '<domain type="a<b"/>', 'domain XML: not well-formed XML at line 1, column 17: disallowed character.'],
    ['unclosed comment', '<domain><!-- x</domain>', 'domain XML: not well-formed XML at line 1, column 24: unclosed tag: domain'],
    ['not a domain', '<network><name>x</name></network>', 'domain XML: the root element is <network>, expected a libvirt <domain>'],
    ['a namespaced domain', '<domain xmlns="urn:x"/>', 'domain XML: the root element is <domain> in namespace "urn:x", expected a libvirt <domain>'],
    ['an undeclared prefix', '<domain><qemu:commandline/></domain>', 'domain XML: not well-formed XML at line 1, column 28: unbound namespace prefix: "qemu".'],
    ['a bad character reference', '<domain><name>&#0;</name></domain>', 'domain XML: not well-formed XML at line 1, column 19: malformed character entity.'],
  ];
  for (const [what, xml, message] of cases) {
    it(`rejects ${what} with a clear message`, () => {
      let err: unknown;
      try {
        convertDomain(xml, vmi);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ConvertError);
      expect((err as ConvertError).problems).toEqual([message]);
    });
  }

  it('accepts what is well-formed: declaration, CDATA, character references, single quotes', () => {
    const xml = `<?xml version="1.0" encoding="UTF-8"?>\n<domain type='qemu'><name>a&#x41;&#65;</name><description><![CDATA[<raw> & text]]></description><memory>65536</memory><os><type>hvm</type></os></domain>`;
    const out = convertDomain(xml, vmi);
    expect(out).toContain('<name>aAA</name>');
    expect(out).toMatch(/<description>(<!\[CDATA\[<raw> & text\]\]>|&lt;raw&gt; &amp; text)<\/description>/);
  });
});

describe('disk target names', () => {
  it('count like libvirt: vda..vdz, vdaa..vdzz, vdaaa', () => {
    expect([0, 1, 25, 26, 27, 51, 52, 701, 702].map((i) => diskTargetName('vd', i))).toEqual([
      'vda', 'vdb', 'vdz', 'vdaa', 'vdab', 'vdaz', 'vdba', 'vdzz', 'vdaaa',
    ]);
  });
  it('ours count down from vdzzz (the last three-letter name), skipping taken ones', () => {
    expect(diskTargetName('vd', 18277)).toBe('vdzzz');
    expect(ourTargetNames('vd', new Set(['vdzzy', 'vdzza']), 27).slice(-3)).toEqual(['vdzyz', 'vdzyy', 'vdzyx']);
    expect(ourTargetNames('vd', new Set(), 1)).toEqual(['vdzzz']);
  });
});
