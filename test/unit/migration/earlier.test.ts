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
import { HYDRATED_ANNOTATION, MigrationAgent } from '../../../src/kube/migration.js';
import { silentLogger } from '../../../src/log.js';
import { createMetrics } from '../../../src/metrics/metrics.js';

/**
 * A source that handed a VMI over keeps exporting until the target's word; when KubeVirt has
 * moved on to a migration this node takes no part in (B -> C right after A -> B), the source
 * still reads that word from the VMI and lets go.
 */

const UID = 'u1';
const ID = diskId(UID, 'root');
const REF: RemoteDiskRef = { transport: 'nbd', address: { kind: 'unix', path: '/run/a.sock' }, exportName: ID, sizeBytes: 1 << 20 };
const vmiWith = (node: string, migrationState: object, annotations: Record<string, string> = {}): KubernetesObject =>
  ({
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'vm1', namespace: 'default', uid: UID, labels: { 'kubevirt.io/nodeName': node }, annotations: { 'kubevirt-spdk.io/volumes': '- {name: root, spdkVhostBlkDisk: {blank: {}, capacity: 8Mi}}\n', ...annotations } },
    status: { migrationState },
  }) as KubernetesObject;

class Backend extends EventEmitter {
  readonly kind = 'qsd' as const;
  async health(): Promise<BackendHealth> {
    return { ok: true, kind: 'qsd', instance: 'p1' };
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

describe('an earlier migration finished on its own', () => {
  it('B -> C right after A -> B: A still lets go of its export when B says the disk stands alone', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'mea-'));
    let current = vmiWith('node-a', { migrationUid: 'm1', sourceNode: 'node-a', targetNode: 'node-b', mode: 'PreCopy' });
    let exported: Record<string, { ref: RemoteDiskRef; vmi: { namespace: string; name: string; uid: string }; disk: string }> = {
      [ID]: { ref: REF, vmi: { namespace: 'default', name: 'vm1', uid: UID }, disk: 'root' },
    };
    const api = { getVmi: async () => current, patchVmi: async () => undefined, createEvent: async () => undefined } as unknown as KubeApi;
    const m = new MigrationAgent({
      node: 'node-a',
      backend: new Backend() as unknown as StorageBackend,
      agent: { exportsNow: () => exported, lastReport: undefined },
      api,
      stateDir: dir,
      exportAddress: { kind: 'unix', path: '/run/a.sock' },
      metrics: createMetrics(),
      logger: silentLogger,
      resync: () => undefined,
      pollMs: 60_000,
    });
    await m.init();
    const tick = async (onNode: KubernetesObject[]): Promise<void> => {
      m.onSnapshot({ vmis: onNode, migrationTargets: [], slots: new Map(onNode.length ? [[UID, 'slot-01']] : []) });
      await m.idle();
    };
    await tick([current]);
    expect(m.records.get(UID)?.journal.exports).toEqual({ root: REF });
    // m1 succeeded: the VMI is B's now; A hands over and keeps exporting.
    current = vmiWith('node-b', { migrationUid: 'm1', sourceNode: 'node-a', targetNode: 'node-b', mode: 'PreCopy', completed: true });
    await tick([]);
    expect(m.records.get(UID)?.journal.phase).toBe('handedOver');
    expect(m.nodeIntent([]).exports.map((e) => e.id)).toEqual([ID]);
    // B hydrated and at once KubeVirt starts B -> C: A is no part of m2, yet reads B's word for m1.
    current = vmiWith('node-b', { migrationUid: 'm2', sourceNode: 'node-b', targetNode: 'node-c', mode: 'PreCopy' }, { [HYDRATED_ANNOTATION]: JSON.stringify([{ disk: 'root', migration: 'm1' }]) });
    await tick([]);
    expect(m.records.get(UID)).toBeUndefined();
    expect(m.nodeIntent([]).exports).toEqual([]);
    exported = {};
    await m.stop();
  });
});
