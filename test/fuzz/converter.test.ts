import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { stringify } from 'yaml';
import { describe, expect, it } from 'vitest';
import { parseVmi } from '../../src/api/vmi.js';
import { VOLUMES_ANNOTATION } from '../../src/api/volumes.js';
import { ConvertError, convertDomain } from '../../src/converter/index.js';
import { expectValidDomain, haveVirtXmlValidate } from '../unit/converter/virt-xml-validate.js';

/**
 * The converter under random volumes and random damage to real domain XML: a valid input
 * gives an idempotent rewrite (a sample of them checked by libvirt's own schema), and any
 * malformed input is a ConvertError, never another exception or a hang.
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? '200');
const VALIDATE = Number(process.env.FUZZ_VALIDATE ?? '3');
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : Math.floor(Math.random() * 2 ** 31);
console.log(`[fuzz] converter seed=${SEED} runs=${RUNS} (replay with FUZZ_SEED=${SEED})`);

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'converter');
const domains = ['minimal.xml', 'kubevirt-q35.xml', 'kubevirt-hugepages.xml'].map((f) => readFileSync(path.join(fixtures, f), 'utf8'));

const volume = fc.record({
  name: fc.stringMatching(/^[a-z]([-a-z0-9]{0,20}[a-z0-9])?$/),
  spdkVhostBlkDisk: fc.oneof(
    fc.record({ blank: fc.constant({}), capacity: fc.constantFrom('1Gi', '20Gi') }),
    fc.record({ bdev: fc.constantFrom('Nvme0n1', 'rbd0'), readonly: fc.boolean() }),
    fc.record({ blank: fc.constant({}), capacity: fc.constant('2Gi'), bootOrder: fc.integer({ min: 1, max: 9 }), queues: fc.integer({ min: 1, max: 8 }), reconnectInterval: fc.constantFrom('1s', '10s') }),
  ),
});
// Boot orders must be unique (the schema says so): renumber the ones drawn.
const volumes = fc
  .uniqueArray(volume, { minLength: 1, maxLength: 8, selector: (v) => v.name })
  .map((vs) => vs.map((v, i) => ('bootOrder' in v.spdkVhostBlkDisk ? { ...v, spdkVhostBlkDisk: { ...v.spdkVhostBlkDisk, bootOrder: i + 1 } } : v)));
const vmiOf = (vols: unknown[]) => parseVmi({ metadata: { name: 'vm', namespace: 'default', annotations: { [VOLUMES_ANNOTATION]: stringify(vols, { aliasDuplicateObjects: false }) } } });

describe('fuzz: converter', () => {
  it('random volumes on real domains: the rewrite is idempotent and keeps one disk per volume', async () => {
    const samples: string[] = [];
    fc.assert(
      fc.property(volumes, fc.constantFrom(...domains.keys()), (vols, d) => {
        const vmi = vmiOf(vols);
        const once = convertDomain(domains[d] ?? '', vmi);
        expect(convertDomain(once, vmi)).toBe(once);
        expect(once.match(/type=['"]vhostuser['"]/g)?.length).toBe(vols.length);
        if (samples.length < VALIDATE) samples.push(once);
      }),
      { numRuns: RUNS, seed: SEED },
    );
    // virt-xml-validate spawns a process: only a few outputs per run.
    if (haveVirtXmlValidate) for (const xml of samples) await expectValidDomain(xml);
  });

  it('malformed XML is a ConvertError, never a crash or a hang', () => {
    const vmi = vmiOf([{ name: 'root', spdkVhostBlkDisk: { blank: {}, capacity: '1Gi' } }]);
    const damaged = fc.tuple(fc.constantFrom(...domains), fc.nat(), fc.nat({ max: 50 }), fc.string({ maxLength: 10 })).map(([xml, at, del, ins]) => {
      const i = at % xml.length;
      return xml.slice(0, i) + ins + xml.slice(i + del);
    });
    const hostile = fc.constantFrom(
      '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><domain type="kvm"><name>&x;</name></domain>',
      '<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><domain>&c;</domain>',
      `${'<a>'.repeat(100000)}`,
      '<domain><devices><disk type="file"><target dev="vda"/></disk></devices>',
      '',
      '\u0000',
      '<domain xmlns:x="urn:x"><x:y/></domain><domain/>',
    );
    fc.assert(
      fc.property(fc.oneof(damaged, hostile, fc.string()), (xml) => {
        try {
          convertDomain(xml, vmi);
        } catch (e) {
          if (!(e instanceof ConvertError)) throw new Error(`not a ConvertError: ${String(e)}`);
        }
      }),
      { numRuns: RUNS, seed: SEED },
    );
  });

  it.skipIf(!haveVirtXmlValidate)('external entities are never expanded into the output', () => {
    const xml = domains[0]?.replace('<domain', '<!DOCTYPE domain [<!ENTITY x SYSTEM "file:///etc/hostname">]>\n<domain') ?? '';
    const vmi = vmiOf([{ name: 'root', spdkVhostBlkDisk: { blank: {}, capacity: '1Gi' } }]);
    let out = '';
    try {
      out = convertDomain(xml, vmi);
    } catch (e) {
      expect(e).toBeInstanceOf(ConvertError);
    }
    expect(out).not.toContain(readFileSync('/etc/hostname', 'utf8').trim() || '\u0000never');
  });
});
