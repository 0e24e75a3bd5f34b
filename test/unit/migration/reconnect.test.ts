import { afterEach, describe, expect, it } from 'vitest';
import { REF, UID, migrationAgentRig, removeMigrationAgentDirs, vmiWith, type MigrationAgentRig } from '../../helpers/migration-agent.js';

/**
 * A transient reconnect of the backend's RPC connection is not a backend restart: only a new
 * process (health().instance changed) cancels a migration in flight on the source.
 */

const running = vmiWith('node-a', { migrationUid: 'm1', sourceNode: 'node-a', targetNode: 'node-b', mode: 'PreCopy' });

afterEach(removeMigrationAgentDirs);

async function source(instance: string | null = 'p1'): Promise<MigrationAgentRig> {
  const r = await migrationAgentRig(running, {}, instance);
  expect(r.m.records.get(UID)?.journal.exports).toEqual({ root: REF });
  return r;
}

async function reconnect(r: MigrationAgentRig): Promise<void> {
  r.backend.emit('disconnected');
  r.backend.emit('connected');
  await r.m.idle();
}

describe('a backend reconnect during a migration', () => {
  it('to the same process goes on; to a new process cancels the migration', async () => {
    const r = await source();
    expect(r.m.records.get(UID)?.backendInstance).toBe('p1');
    await reconnect(r);
    expect(r.deleted).toEqual([]);
    expect(r.m.records.get(UID)?.abort).toBeUndefined();
    r.backend.instance = 'p2';
    await reconnect(r);
    expect(r.deleted).toEqual(['mig1']);
    expect(r.m.records.get(UID)?.abort).toBe('done');
    await r.close();
  });

  it('a driver that cannot tell the process apart is taken at its worst: a reconnect cancels', async () => {
    const r = await source(null);
    await reconnect(r);
    expect(r.deleted).toEqual(['mig1']);
    await r.close();
  });

  it('an agent that restarts with its backend finds the new process from the record', async () => {
    const r = await source();
    await r.m.stop();
    // The agent and the backend restart together: no event is seen, the record tells.
    r.backend.instance = 'p2';
    await r.restart();
    await r.tick([running]);
    expect(r.deleted).toEqual(['mig1']);
    await r.close();
  });
});
