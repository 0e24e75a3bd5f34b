import { silentLogger, type Logger } from '../log.js';
import { BackendError, type StorageBackend } from '../backend/types.js';
import type { MigrationAction, MigrationPlan } from './coordinator.js';
import type { MigrationJournal } from './schemas.js';

/**
 * Runs a MigrationPlan's actions against the node's backend, one at a time and in order,
 * saving the journal after each: a crash between two actions loses nothing, and the next
 * plan (from the saved journal) skips what was done. The first failure stops the run; the
 * caller plans again later (every action is idempotent).
 */

export interface ExecuteOptions {
  /** Persists the journal (the agent's state dir, a VMI annotation...). */
  save(journal: MigrationJournal): Promise<void>;
  /** The target slot is ready: the device plugin may let the compute container start. */
  onTargetReady?(slot: string): Promise<void> | void;
  logger?: Logger;
}

export class MigrationError extends Error {
  override readonly name = 'MigrationError';
  constructor(message: string, readonly action: MigrationAction, options?: { cause?: unknown }) {
    super(message, options);
  }
}

function need<K extends 'exportDisk' | 'unexportDisk' | 'attachRemoteDisk' | 'detachRemoteDisk'>(
  backend: StorageBackend,
  method: K,
  action: MigrationAction,
): NonNullable<StorageBackend[K]> {
  const fn = backend[method];
  if (!fn) throw new MigrationError(`${action.type}: the ${backend.kind} backend does not implement ${method}`, action);
  return fn.bind(backend) as NonNullable<StorageBackend[K]>;
}

export async function executeMigrationPlan(backend: StorageBackend, plan: MigrationPlan, opts: ExecuteOptions): Promise<MigrationJournal | undefined> {
  let j = plan.journal;
  if (!j) return undefined;
  const log = (opts.logger ?? silentLogger).child({ component: 'migration', migration: j.migrationUid, role: j.role });
  for (const action of plan.actions) {
    const started = Date.now();
    try {
      j = await apply(backend, j, action, opts);
    } catch (e) {
      // The source's export cannot be reached: the migration cannot succeed; the next plan
      // refuses it (with this reason) and gives back what the target made.
      if (action.type === 'attachRemote' && e instanceof BackendError && e.kind === 'transport') {
        j = { ...j, unreachable: { disk: action.disk, message: e.message } };
        await opts.save(j);
        log.warn({ event: 'migration.unreachable', disk: action.disk, err: e.message }, 'source export unreachable');
      }
      log.warn({ event: 'migration.action.failed', action: action.type, disk: 'disk' in action ? action.disk : undefined, err: String(e) }, 'migration action failed');
      throw e instanceof MigrationError ? e : new MigrationError(`${action.type}${'disk' in action ? ` of disk ${action.disk}` : ''}: ${e instanceof Error ? e.message : String(e)}`, action, { cause: e });
    }
    await opts.save(j);
    log.info({ event: `migration.${action.type}`, disk: 'disk' in action ? action.disk : undefined, ms: Date.now() - started }, action.type);
  }
  return j;
}

async function apply(backend: StorageBackend, j: MigrationJournal, a: MigrationAction, opts: ExecuteOptions): Promise<MigrationJournal> {
  switch (a.type) {
    case 'export': {
      const ref = await need(backend, 'exportDisk', a)(a.diskId, { listenAddress: a.address });
      return { ...j, exports: { ...j.exports, [a.disk]: ref } };
    }
    case 'unexport': {
      await need(backend, 'unexportDisk', a)(a.diskId);
      const { [a.disk]: _gone, ...exports } = j.exports;
      return { ...j, exports };
    }
    case 'attachRemote': {
      const disk = await need(backend, 'attachRemoteDisk', a)(a.ref, a.diskId);
      return { ...j, attached: { ...j.attached, [a.disk]: { diskRef: disk.ref, kind: 'remote' } } };
    }
    case 'openShared': {
      const disk = await backend.ensureDisk({ id: a.diskId, source: { kind: 'bdev', bdev: a.bdev } });
      return { ...j, attached: { ...j.attached, [a.disk]: { diskRef: disk.ref, kind: 'shared' } } };
    }
    case 'createController': {
      const opened = j.attached[a.disk];
      if (!opened) throw new MigrationError(`createController ${a.controller}: disk ${a.disk} is not open on this node`, a);
      await backend.ensureController({
        name: a.controller,
        diskRef: opened.diskRef,
        readonly: a.readonly,
        ...(a.queues !== undefined ? { queues: a.queues } : {}),
      });
      return { ...j, controllers: { ...j.controllers, [a.disk]: a.controller } };
    }
    case 'deleteController': {
      await backend.deleteController(a.controller);
      // Target: forget it (rolled back); source: remember it was given up.
      if (j.role === 'target') {
        const { [a.disk]: _gone, ...controllers } = j.controllers;
        return { ...j, controllers };
      }
      return { ...j, controllers: { ...j.controllers, [a.disk]: a.controller } };
    }
    case 'detachRemote': {
      await need(backend, 'detachRemoteDisk', a)(a.diskId);
      const { [a.disk]: _gone, ...attached } = j.attached;
      return { ...j, attached };
    }
    case 'reportTargetReady':
      await opts.onTargetReady?.(a.slot);
      return j;
    case 'recordDataNode':
      return { ...j, dataNode: { ...j.dataNode, [a.disk]: a.node } };
    case 'setPhase':
      return { ...j, phase: a.phase };
  }
}
