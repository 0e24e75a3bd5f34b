import { EventEmitter } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { KubernetesObject } from '@kubernetes/client-node';
import type { RemoteDiskRef } from '../../src/backend/remote.js';
import type { BackendHealth, StorageBackend } from '../../src/backend/types.js';
import { diskId } from '../../src/contract/index.js';
import type { KubeApi } from '../../src/kube/api.js';
import type { ClusterSnapshot } from '../../src/kube/cluster.js';
import { MigrationAgent } from '../../src/kube/migration.js';
import { createLogger, silentLogger } from '../../src/log.js';
import { createMetrics } from '../../src/metrics/metrics.js';

/**
 * One MigrationAgent in a unit test, without cluster mode: a fake backend that exports one disk
 * (qsd-shaped, NBD on a unix socket), a stubbed KubeApi that records what the agent asks of
 * it, and a tick driven by hand with the snapshot cluster mode would hand over.
 */

export const UID = 'u1';
export const ID = diskId(UID, 'root');
export const VOLUMES = '- {name: root, spdkVhostBlkDisk: {blank: {}, capacity: 8Mi}}\n';
export const REF: RemoteDiskRef = { transport: 'nbd', address: { kind: 'unix', path: '/run/a.sock' }, exportName: ID, sizeBytes: 1 << 20 };
export const VMI_REF = { namespace: 'default', name: 'vm1', uid: UID };

/** The VMI vm1 on `node` with this migration state (and annotations beside its volumes). */
export function vmiWith(node: string, migrationState: object, annotations: Record<string, string> = {}): KubernetesObject {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'vm1', namespace: 'default', uid: UID, labels: { 'kubevirt.io/nodeName': node }, annotations: { 'kubevirt-spdk.io/volumes': VOLUMES, ...annotations } },
    status: { migrationState },
  } as KubernetesObject;
}

/** A node's NodeImageCache with these migration fields in its status (what its agent writes). */
export function nodeCacheWith(node: string, migration: { migrationHydrated?: unknown; migrationExports?: unknown }): KubernetesObject {
  return { apiVersion: 'kubevirt-spdk.io/v1alpha1', kind: 'NodeImageCache', metadata: { name: node }, status: { backend: 'qsd', summary: 'none', usedBytes: 0, updatedAt: '', images: [], ...migration } } as KubernetesObject;
}

/** A node's NodeImageCache whose status lists `migrationHydrated` (what a target agent writes). */
export const nodeCacheSaying = (node: string, migrationHydrated: unknown): KubernetesObject => nodeCacheWith(node, { migrationHydrated });

/** A backend that exports the disk and tells its process by `instance` (undefined: it cannot tell). */
export class FakeMigrationBackend extends EventEmitter {
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

export type MigrationAgentOptions = ConstructorParameters<typeof MigrationAgent>[0];
type Exported = ReturnType<MigrationAgentOptions['agent']['exportsNow']>;

export interface MigrationAgentRig {
  m: MigrationAgent;
  opts: MigrationAgentOptions;
  backend: FakeMigrationBackend;
  /** The VMI the API returns (getVmi); tests change it as KubeVirt would. */
  vmi: KubernetesObject;
  /** What the agent holds as exported now (exportsNow). */
  exported: Exported;
  /** Names of the migration objects the agent deleted. */
  deleted: string[];
  /** A round of the agent with the VMIs on the node and every node's NodeImageCache. */
  tick(onNode: readonly KubernetesObject[], nodeImageCaches?: readonly KubernetesObject[]): Promise<void>;
  /** A new MigrationAgent on the same state directory (an agent restart). */
  restart(): Promise<MigrationAgent>;
  close(): Promise<void>;
}

const dirs: string[] = [];

/** Removes the state directories of every rig made (afterEach). */
export async function removeMigrationAgentDirs(): Promise<void> {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
}

/**
 * A source agent on node-a that exports vm1's disk, started on `vmi` (its first round done).
 * `over` replaces options (e.g. the node, or a publishHydrated hook); `instance` is the backend's
 * process as health() tells it (null: a driver that cannot tell).
 */
export async function migrationAgentRig(vmi: KubernetesObject, over: Partial<MigrationAgentOptions> = {}, instance: string | null = 'p1'): Promise<MigrationAgentRig> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'mag-'));
  dirs.push(dir);
  const backend = new FakeMigrationBackend();
  backend.instance = instance ?? undefined;
  const rig: MigrationAgentRig = {
    backend,
    vmi,
    exported: { [ID]: { ref: REF, vmi: VMI_REF, disk: 'root' } },
    deleted: [],
    m: undefined as unknown as MigrationAgent,
    opts: undefined as unknown as MigrationAgentOptions,
    tick: async (onNode, nodeImageCaches = []) => {
      const snap: ClusterSnapshot = { vmis: onNode, migrationTargets: [], slots: new Map(onNode.length ? [[UID, 'slot-01']] : []), nodeImageCaches };
      rig.m.onSnapshot(snap);
      await rig.m.idle();
    },
    restart: async () => {
      await rig.m.stop();
      rig.m = new MigrationAgent(rig.opts);
      await rig.m.init();
      return rig.m;
    },
    close: () => rig.m.stop(),
  };
  const api = {
    getVmi: async () => rig.vmi,
    patchVmi: async () => undefined,
    createEvent: async () => undefined,
    listVmiMigrations: async () => [{ metadata: { name: 'mig1', uid: 'm1' }, spec: { vmiName: 'vm1' } }],
    deleteVmiMigration: async (_ns: string, name: string) => void rig.deleted.push(name),
  } as unknown as KubeApi;
  rig.opts = {
    node: 'node-a',
    backend: backend as unknown as StorageBackend,
    agent: { exportsNow: () => rig.exported, lastReport: undefined },
    api,
    stateDir: dir,
    exportAddress: { kind: 'unix', path: '/run/a.sock' },
    metrics: createMetrics(),
    logger: process.env.MIG_DEBUG ? createLogger('m', 'debug') : silentLogger,
    resync: () => undefined,
    pollMs: 60_000,
    ...over,
  };
  rig.m = new MigrationAgent(rig.opts);
  await rig.m.init();
  await rig.tick([vmi]);
  return rig;
}
