import { afterEach, describe, expect, it } from 'vitest';
import { ID, REF, UID, migrationAgentRig, nodeCacheSaying, removeMigrationAgentDirs, vmiWith } from '../../helpers/migration-agent.js';

/**
 * A source that handed a VMI over keeps exporting until the target's word; when KubeVirt has
 * moved on to a migration this node takes no part in (B -> C right after A -> B), the source
 * still reads that word from the target's NodeImageCache and lets go.
 */

afterEach(removeMigrationAgentDirs);

describe('an earlier migration finished on its own', () => {
  it('B -> C right after A -> B: A still lets go of its export when B says the disk stands alone', async () => {
    const r = await migrationAgentRig(vmiWith('node-a', { migrationUid: 'm1', sourceNode: 'node-a', targetNode: 'node-b', mode: 'PreCopy' }));
    expect(r.m.records.get(UID)?.journal.exports).toEqual({ root: REF });
    // m1 succeeded: the VMI is B's now; A hands over and keeps exporting.
    r.vmi = vmiWith('node-b', { migrationUid: 'm1', sourceNode: 'node-a', targetNode: 'node-b', mode: 'PreCopy', completed: true });
    await r.tick([]);
    expect(r.m.records.get(UID)?.journal.phase).toBe('handedOver');
    expect(r.m.nodeIntent([]).exports.map((e) => e.id)).toEqual([ID]);
    // B hydrated and at once KubeVirt starts B -> C: A is no part of m2, yet reads B's word for m1.
    r.vmi = vmiWith('node-b', { migrationUid: 'm2', sourceNode: 'node-b', targetNode: 'node-c', mode: 'PreCopy' });
    await r.tick([], [nodeCacheSaying('node-b', [{ vmi: UID, migration: 'm1', disk: 'root' }])]);
    expect(r.m.records.get(UID)).toBeUndefined();
    expect(r.m.nodeIntent([]).exports).toEqual([]);
    r.exported = {};
    await r.close();
  });
});
