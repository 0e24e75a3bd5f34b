import { EventEmitter } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { KubernetesObject } from '@kubernetes/client-node';
import { afterEach, describe, expect, it } from 'vitest';
import type { RemoteDiskRef } from '../../../src/backend/remote.js';
import type { BackendHealth, StorageBackend } from '../../../src/backend/types.js';
import { diskId } from '../../../src/contract/index.js';
import type { KubeApi } from '../../../src/kube/api.js';
import { MigrationAgent } from '../../../src/kube/migration.js';
import { silentLogger } from '../../../src/log.js';
import { createMetrics } from '../../../src/metrics/metrics.js';

/**
 * A transient reconnect of the backend's RPC connection is not a backend restart: only a new
 * process (health().instance changed) cancels a migration in flight on the source.
 */

const UID = 'u1';
const ID = diskId(UID, 'root');
const REF: RemoteDiskRef = { transport: 'nbd', address: { kind: 'unix', path: '/run/x.sock' }, exportName: ID, sizeBytes: 1 << 20 };
const running = { migrationUid: 'm1', sourceNode: 'node-a', targetNode: 'node-b', mode: 'PreCopy' };
const vmi: KubernetesObject = {
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachineInstance',
  metadata: { name: 'vm1', namespace: 'default', uid: UID, labels: { 'kubevirt.io/nodeName': 'node-a' }, annotations: { 'kubevirt-spdk.io/volumes': '- {name: root, spdkVhostBlkDisk: {blank: {}, capacity: 8Mi}}\n' } },
  status: { migrationState: running },
} as KubernetesObject;

class Backend extends EventEmitter {
  readonly kind = 'qsd' as const;
  instance: string | undefined = 'p1';
  async health(): Promise<BackendHealth> {
    return { ok: true, kind: 'qsd', ...(this.instance !== undefined ? { instance: this.instance } : {}) };
  }
  async exportDisk(): Promise<RemoteDiskRef> {
    return REF;
  }
  async attachRemoteDisk(): Promise<never> {
    throw new Error('unused');
  }
}

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

type Options = ConstructorParameters<typeof MigrationAgent>[0];

async function source(backend: Backend): Promise<{ m: MigrationAgent; deleted: string[]; opts: Options }> {
  dir = await mkdtemp(path.join(os.tmpdir(), 'mrc-'));
  const deleted: string[] = [];
  const api = {
    getVmi: async () => vmi,
    patchVmi: async () => undefined,
    createEvent: async () => undefined,
    listVmiMigrations: async () => [{ metadata: { name: 'mig1', uid: 'm1' }, spec: { vmiName: 'vm1' } }],
    deleteVmiMigration: async (_ns: string, name: string) => void deleted.push(name),
  } as unknown as KubeApi;
  const opts: Options = {
    node: 'node-a',
    backend: backend as unknown as StorageBackend,
    agent: { exportsNow: () => ({ [ID]: { ref: REF, vmi: { namespace: 'default', name: 'vm1', uid: UID }, disk: 'root' } }), lastReport: undefined },
    api,
    stateDir: dir,
    exportAddress: { kind: 'unix', path: '/run/x.sock' },
    metrics: createMetrics(),
    logger: silentLogger,
    resync: () => undefined,
    pollMs: 60_000,
  };
  const m = new MigrationAgent(opts);
  await m.init();
  m.onSnapshot({ vmis: [vmi], migrationTargets: [], slots: new Map([[UID, 'slot-01']]) });
  await m.idle();
  expect(m.records.get(UID)?.journal.exports).toEqual({ root: REF });
  return { m, deleted, opts };
}

async function reconnect(backend: Backend, m: MigrationAgent): Promise<void> {
  backend.emit('disconnected');
  backend.emit('connected');
  await new Promise((r) => setTimeout(r, 20));
  await m.idle();
}

describe('a backend reconnect during a migration', () => {
  it('to the same process goes on; to a new process cancels the migration', async () => {
    const b = new Backend();
    const { m, deleted } = await source(b);
    expect(m.records.get(UID)?.backendInstance).toBe('p1');
    await reconnect(b, m);
    expect(deleted).toEqual([]);
    expect(m.records.get(UID)?.abort).toBeUndefined();
    b.instance = 'p2';
    await reconnect(b, m);
    expect(deleted).toEqual(['mig1']);
    expect(m.records.get(UID)?.abort).toBe('done');
    await m.stop();
  });

  it('a driver that cannot tell the process apart is taken at its worst: a reconnect cancels', async () => {
    const b = new Backend();
    b.instance = undefined;
    const { m, deleted } = await source(b);
    await reconnect(b, m);
    expect(deleted).toEqual(['mig1']);
    await m.stop();
  });

  it('an agent that restarts with its backend finds the new process from the record', async () => {
    const b = new Backend();
    const { m, deleted, opts } = await source(b);
    await m.stop();
    // The agent and the backend restart together: no event is seen, the record tells.
    b.instance = 'p2';
    const m2 = new MigrationAgent(opts);
    await m2.init();
    m2.onSnapshot({ vmis: [vmi], migrationTargets: [], slots: new Map([[UID, 'slot-01']]) });
    await m2.idle();
    expect(deleted).toEqual(['mig1']);
    await m2.stop();
  });
});
