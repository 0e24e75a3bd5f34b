import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { freshJournal } from '../../../src/migration/coordinator.js';
import { MAX_HYDRATED_ENTRIES, hydratedOn, nextHydratedList, type ExportEntry, type HydratedEntry } from '../../../src/kube/migration.js';
import { ID, REF, UID, VMI_REF, migrationAgentRig, nodeCacheSaying, nodeCacheWith, removeMigrationAgentDirs, vmiWith, type MigrationAgentRig } from '../../helpers/migration-agent.js';

/**
 * What the two nodes of a migration tell each other goes through their own NodeImageCache
 * status (only agents write it), never through the VMI (its owner writes that), and each node
 * hears only the other node its own record names. After a data-moving migration the source
 * deletes its copy of a disk only on the target's word that the disk stands alone there; the
 * target clones only what the source says it exports.
 */

afterEach(removeMigrationAgentDirs);

const m1 = { migrationUid: 'm1', sourceNode: 'node-a', targetNode: 'node-b', mode: 'PreCopy' };
const word = (over: Partial<HydratedEntry> = {}): HydratedEntry[] => [{ vmi: UID, migration: 'm1', disk: 'root', ...over }];

/** Source A after m1 (A -> B) succeeded: handed over, still exporting root. */
async function handedOver(): Promise<MigrationAgentRig> {
  const r = await migrationAgentRig(vmiWith('node-a', m1));
  r.vmi = vmiWith('node-b', { ...m1, completed: true });
  await r.tick([]);
  expect(r.m.records.get(UID)?.journal).toMatchObject({ phase: 'handedOver', exports: { root: REF }, peer: 'node-b' });
  return r;
}

const stillExports = (r: MigrationAgentRig): void => {
  expect(r.m.records.get(UID)?.journal.exports).toEqual({ root: REF });
  expect(r.m.records.get(UID)?.journal.hydrated).toEqual([]);
  expect(r.m.nodeIntent([]).exports.map((e) => e.id)).toEqual([ID]);
};

describe('the source lets go of its copy only on the target node\'s word', () => {
  it('a VMI annotation claiming the disk hydrated (written by the VMI\'s owner) is not heard', async () => {
    const r = await handedOver();
    r.vmi = vmiWith('node-b', { ...m1, completed: true }, { 'kubevirt-spdk.io/migration-hydrated': JSON.stringify([{ disk: 'root', migration: 'm1' }]) });
    for (let i = 0; i < 3; i++) await r.tick([], [nodeCacheSaying('node-b', [])]);
    stillExports(r);
    await r.close();
  });

  it('another node\'s NodeImageCache claiming it is not heard, nor the target\'s word on another VMI or migration', async () => {
    const r = await handedOver();
    await r.tick([], [nodeCacheSaying('node-c', word()), nodeCacheSaying('node-a', word())]);
    stillExports(r);
    await r.tick([], [nodeCacheSaying('node-b', [...word({ vmi: 'other-uid' }), ...word({ migration: 'm0' }), ...word({ disk: 'data' })])]);
    stillExports(r);
    // A list that breaks the schema (an extra field, over the bound) is no word at all.
    await r.tick([], [nodeCacheSaying('node-b', [{ ...word()[0], extra: true }])]);
    await r.tick([], [nodeCacheSaying('node-b', Array.from({ length: MAX_HYDRATED_ENTRIES + 1 }, () => word()[0]))]);
    stillExports(r);
    await r.close();
  });

  it('the target node\'s NodeImageCache saying so makes the source let go', async () => {
    const r = await handedOver();
    await r.tick([], [nodeCacheSaying('node-c', []), nodeCacheSaying('node-b', word())]);
    expect(r.m.nodeIntent([]).exports).toEqual([]);
    // Nothing of m1 is left here: the record is history.
    expect(r.m.records.get(UID)).toBeUndefined();
    await r.close();
  });

  it('the target is the one the source recorded, even when the VMI later names another', async () => {
    const r = await handedOver();
    // A migrationState rewritten to name node-c as m1's target does not make node-c's word count.
    r.vmi = vmiWith('node-b', { ...m1, targetNode: 'node-c', completed: true });
    await r.tick([], [nodeCacheSaying('node-c', word())]);
    stillExports(r);
    await r.tick([], [nodeCacheSaying('node-b', word())]);
    expect(r.m.nodeIntent([]).exports).toEqual([]);
    await r.close();
  });
});

describe('the target\'s word', () => {
  const e = (migration: string, disk = 'root', vmi = UID): HydratedEntry => ({ vmi, migration, disk });

  it('is read from the named node only, per VMI and migration', () => {
    const caches = [nodeCacheSaying('node-b', [e('m1'), e('m1', 'data'), e('m2'), e('m1', 'root', 'u2')]), nodeCacheSaying('node-c', [e('m1', 'boot')]), null, { metadata: {} }];
    expect([...hydratedOn(caches, 'node-b', UID, 'm1')]).toEqual(['root', 'data']);
    expect([...hydratedOn(caches, 'node-c', UID, 'm1')]).toEqual(['boot']);
    expect(hydratedOn(caches, undefined, UID, 'm1').size).toBe(0);
    expect(hydratedOn(caches, 'node-d', UID, 'm1').size).toBe(0);
    expect(hydratedOn([nodeCacheSaying('node-b', 'not a list')], 'node-b', UID, 'm1').size).toBe(0);
  });

  it('is kept while the disk is here from that migration (after the target forgot the migration), dropped once it is not, and bounded', () => {
    const held = new Set([JSON.stringify(e('m1'))]);
    const holds = (x: HydratedEntry): boolean => held.has(JSON.stringify(x));
    const said = nextHydratedList([], [e('m1')], holds);
    expect(said).toEqual([e('m1')]);
    // The record is gone (nothing new to say): the word stays while the disk does.
    expect(nextHydratedList(said, [], holds)).toEqual([e('m1')]);
    expect(nextHydratedList(said, [e('m1')], holds)).toEqual([e('m1')]);
    held.clear();
    expect(nextHydratedList(said, [], holds)).toEqual([]);
    const many = Array.from({ length: MAX_HYDRATED_ENTRIES + 5 }, (_x, i) => e(`m${i}`));
    const bounded = nextHydratedList([], many, () => true);
    expect(bounded).toHaveLength(MAX_HYDRATED_ENTRIES);
    expect(bounded[0]).toEqual(e('m5'));
  });

  it('a target agent publishes it, keeps it across a restart, and drops it when the disk is no longer its clone', async () => {
    const published: HydratedEntry[][] = [];
    let owned: Record<string, { migration?: string }> = { [ID]: { migration: 'm1' } };
    const done = vmiWith('node-b', { ...m1, completed: true });
    const r = await migrationAgentRig(done, {
      node: 'node-b',
      agent: { exportsNow: () => ({}), lastReport: undefined, ownedNow: () => owned as never },
      publishHydrated: (list) => void published.push([...list]),
    });
    // B's record of m1 as a target whose lazy clone stands alone here (as the planner left it).
    const journal = { ...freshJournal('m1', 'target', 'node-a'), attached: { root: { kind: 'remote' as const, ref: REF, node: 'node-a', lazy: true } }, hydrated: ['root'], dataNode: { root: 'node-b' }, phase: 'serving' as const };
    await r.m.stop();
    await mkdir(path.join(r.opts.stateDir, 'migrations'), { recursive: true });
    await writeFile(path.join(r.opts.stateDir, 'migrations', `${UID}.json`), JSON.stringify({ vmi: VMI_REF, sourceNode: 'node-a', journal }));
    await r.restart();
    await r.tick([done]);
    expect(published.at(-1)).toEqual([e('m1')]);
    // The migration keeps nothing here any more: forgotten, yet the word stays (persisted).
    expect(r.m.records.get(UID)).toBeUndefined();
    published.length = 0;
    await r.restart();
    await r.tick([done]);
    expect(published).toEqual([[e('m1')]]);
    // The disk went (the VMI moved on and this copy was deleted): the word goes with it.
    owned = {};
    await r.tick([done]);
    expect(published.at(-1)).toEqual([]);
    expect(JSON.parse(await readFile(path.join(r.opts.stateDir, 'migration-hydrated.json'), 'utf8'))).toEqual([]);
    await r.close();
  });
});

describe('the target clones only what the source node says it exports', () => {
  const migrating = vmiWith('node-a', m1, {
    // What a VMI's owner could write: an export anywhere.
    'kubevirt-spdk.io/migration-exports': JSON.stringify([{ disk: 'root', migration: 'm1', ref: { ...REF, address: { kind: 'unix', path: '/run/elsewhere.sock' } } }]),
  });
  const said = (over: Partial<ExportEntry> = {}): ExportEntry[] => [{ vmi: UID, migration: 'm1', disk: 'root', ref: REF, ...over }];

  it('a VMI annotation or another node\'s list is not attached; the source node\'s is', async () => {
    const r = await migrationAgentRig(migrating, { node: 'node-b', agent: { exportsNow: () => ({}), lastReport: undefined } });
    expect(r.m.records.get(UID)?.journal).toMatchObject({ role: 'target', peer: 'node-a', attached: {} });
    await r.tick([migrating], [nodeCacheWith('node-c', { migrationExports: said() })]);
    expect(r.m.records.get(UID)?.journal.attached).toEqual({});
    await r.tick([migrating], [nodeCacheWith('node-a', { migrationExports: said({ migration: 'm0' }) })]);
    expect(r.m.records.get(UID)?.journal.attached).toEqual({});
    await r.tick([migrating], [nodeCacheWith('node-a', { migrationExports: said() })]);
    expect(r.m.records.get(UID)?.journal.attached).toEqual({ root: { kind: 'remote', ref: REF, node: 'node-a' } });
    await r.close();
  });

  it('a source publishes its exports for the target, and takes them back on rollback', async () => {
    const published: ExportEntry[][] = [];
    const r = await migrationAgentRig(vmiWith('node-a', m1), { publishExports: (list) => void published.push([...list]) });
    expect(published.at(-1)).toEqual(said());
    r.vmi = vmiWith('node-a', { ...m1, failed: true });
    await r.tick([r.vmi]);
    expect(published.at(-1)).toEqual([]);
    await r.close();
  });
});
