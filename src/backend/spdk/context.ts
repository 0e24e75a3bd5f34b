import path from 'node:path';
import type { Logger } from '../../log.js';
import type { SpdkApi } from '../../spdk/api.js';
import { LOCAL_ERROR_CODE } from '../../spdk/client.js';
import { SpdkError } from '../../spdk/errors.js';
import type { Bdev, Lvol, VhostController } from '../../spdk/schemas.js';
import { KeyedMutex, SingleFlight } from './concurrency.js';
import { DEFAULT_AIO_BLOCK_SIZE, type SpdkBackendConfig } from './config.js';
import { toBackendError } from './errors.js';

export const MiB = 1024 * 1024;

/** What this spdk_tgt can do, read once per connection. */
export interface SpdkCapabilities {
  version: string;
  major: number;
  minor: number;
  methods: ReadonlySet<string>;
  /** `bdev_aio_create` takes `uuid` (v24.09+): an import's source keeps its UUID across restarts. */
  aioUuid: boolean;
}

/** The loaded lvstore, as the last check found it. */
export interface LvstoreInfo {
  clusterBytes: number;
  /** The lvstore's block size: an image's aio bdev must use it (4096 lvstore + 512 image fails inflate). */
  blockSize: number;
  uuid?: string;
  baseName?: string;
}

/**
 * What the parts of the spdk driver share: the RPC API, the configuration, the locks, what
 * the lvstore and the target are known to be, and the reads every part makes. It keeps no
 * copy of SPDK's state: each read asks SPDK (reads in flight are shared, see SingleFlight).
 *
 * Locks (the concurrency the driver adds to the port's contract, see ../types.ts):
 * - diskLocks, by disk id: ensureDisk, deleteDisk and the migration calls of one disk;
 * - controllerLocks, by controller name;
 * - snapshotLocks, by snapshot alias: metadata operations on one snapshot, one at a time, as
 *   real SPDK answers "Device or resource busy" to a clone of a snapshot while another clone
 *   (or delete of a clone) of it runs.
 */
export class SpdkContext {
  readonly lvs: string;
  readonly vhostDir: string;
  /** Aborted by close(): running imports stop. */
  readonly lifetime = new AbortController();
  readonly diskLocks = new KeyedMutex();
  readonly controllerLocks = new KeyedMutex();
  readonly snapshotLocks = new KeyedMutex();
  /** One bdev_lvol_inflate at a time on this target: see inflate(). */
  private readonly inflates = new KeyedMutex();
  lvstore: LvstoreInfo = { clusterBytes: 4 * MiB, blockSize: DEFAULT_AIO_BLOCK_SIZE };
  capabilities: SpdkCapabilities | undefined;
  private readonly reads = new SingleFlight();

  constructor(
    readonly api: SpdkApi,
    readonly cfg: SpdkBackendConfig,
    readonly log: Logger,
  ) {
    this.lvs = cfg.lvstore.name;
    this.vhostDir = cfg.vhostDir;
  }

  /** Where an image's download waits until it is in the lvstore. */
  imageFile(name: string): string {
    return path.join(this.cfg.stateDir, 'images', `${name}.raw`);
  }

  // ---- reads (shared between concurrent callers) --------------------------------------------

  listLvols(): Promise<Lvol[]> {
    return this.reads.run('lvols', () => this.api.bdevLvolGetLvols({ lvs_name: this.lvs })).catch((e: unknown) => {
      throw toBackendError(e, `listing lvols of ${this.lvs}`);
    });
  }

  listBdevs(): Promise<Bdev[]> {
    return this.reads.run('bdevs', () => this.api.bdevGetBdevs()).catch((e: unknown) => {
      throw toBackendError(e, 'listing bdevs');
    });
  }

  listControllers(): Promise<VhostController[]> {
    return this.reads.run('controllers', () => this.api.vhostGetControllers()).catch((e: unknown) => {
      throw toBackendError(e, 'listing vhost controllers');
    });
  }

  /** One bdev by name or alias; undefined when SPDK has none. */
  getBdev(name: string): Promise<Bdev | undefined> {
    return this.reads.run(`bdev:${name}`, async () => {
      try {
        return (await this.api.bdevGetBdevs({ name }))[0];
      } catch (e) {
        if (e instanceof SpdkError && e.kind === 'notFound') return undefined;
        throw toBackendError(e, `looking up bdev ${name}`);
      }
    });
  }

  // ---- inflate --------------------------------------------------------------------------------

  /**
   * bdev_lvol_inflate, never two at once on one target. SPDK (v24.01 and v25.09 alike) runs
   * every inflate's cluster copies on the RPC thread's blobstore channel; a copy queued behind
   * another inflate's is replayed as the 0-byte read it is made of and never allocates its
   * cluster. That inflate still ends "done": the lvol is thick with clusters that have no data
   * and no backing device, and the first read of one (the GPT examine of its snapshot) crashes
   * spdk_tgt in `bs_io_unit_to_back_dev_lba`; or one inflate never answers. Waiting costs no
   * progress: a queued copy waits for the running one inside SPDK anyway.
   * The lock is held until SPDK answers, even when the caller stops waiting (`signal`): an
   * inflate goes on inside SPDK after its caller gave up.
   */
  async inflate(alias: string, signal?: AbortSignal): Promise<void> {
    const cancelled = (why: string): SpdkError => new SpdkError('bdev_lvol_inflate', LOCAL_ERROR_CODE, `${alias}: cancelled by caller: ${why}`, 'timeout', { cancelled: true });
    const reason = (s: AbortSignal): string => (s.reason instanceof Error ? s.reason.message : String(s.reason ?? 'aborted'));
    if (signal?.aborted === true) throw cancelled(reason(signal));
    const call = this.inflates.run('inflate', async () => {
      if (signal?.aborted === true) throw cancelled(`${reason(signal)} (while another inflate ran)`);
      await this.api.bdevLvolInflate({ name: alias }, { timeoutMs: this.cfg.inflateTimeoutMs, signal: this.lifetime.signal });
    });
    if (!signal) return call;
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => reject(cancelled(`${reason(signal)} (SPDK goes on copying)`));
      signal.addEventListener('abort', onAbort, { once: true });
      call.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  // ---- lvol deletion ------------------------------------------------------------------------

  /** notFound counts as done. */
  async deleteLvol(alias: string): Promise<void> {
    try {
      await this.api.bdevLvolDelete({ name: alias });
    } catch (e) {
      if (e instanceof SpdkError && e.kind === 'notFound') return;
      throw toBackendError(e, `deleting lvol ${alias}`);
    }
  }

  async deleteLvolQuietly(alias: string, log: Logger): Promise<void> {
    await this.deleteLvol(alias).catch((e: unknown) => {
      log.warn({ event: 'lvol.delete_failed', lvol: alias, err: String(e) }, 'could not delete lvol');
    });
  }
}

/** Controllers name their bdev by UUID (v24.01); accept a name or alias too. */
export function servesBdev(c: VhostController, bdev: Bdev): boolean {
  const served = c.backend_specific.block?.bdev;
  if (served === undefined || served === null) return false;
  return served === bdev.uuid || served === bdev.name || bdev.aliases.includes(served);
}
