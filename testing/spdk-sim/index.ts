import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import { silentLogger, type Logger } from '../../src/log.js';
import { rawErrno } from './errors.js';
import { defaultFabric, type NvmfFabric } from './fabric.js';
import type { MethodContext } from './methods.js';
import { SpdkModel, parseCpumask, type ModelSnapshot } from './model.js';
import { LvstoreStore } from './persist.js';
import { Faults, RpcServer, type FaultSpec } from './server.js';
import { VhostSockets } from './vhost.js';
import { versionProfile, type SpdkVersion } from './version.js';

export type { FaultAction, FaultSpec } from './server.js';
export type { ModelSnapshot } from './model.js';
export { NvmfFabric, defaultFabric } from './fabric.js';
export { SPDK_VERSIONS, parseSpdkVersion, type SpdkVersion } from './version.js';

export interface SpdkSimulatorOptions {
  /** JSON-RPC unix socket (spdk_tgt -r). */
  socketPath: string;
  /** Where vhost controller sockets are created (spdk_tgt -S); must exist. */
  vhostDir: string;
  /** Persist lvstore metadata of aio files here, so that it survives a kill and restart. */
  stateDir?: string;
  /** Core mask (spdk_tgt -m); default 0x1. */
  cpumask?: string;
  /** Only process requests on poller ticks this far apart (SPDK polls every 4 ms); 0 = at once. */
  pollIntervalMs?: number;
  logger?: Logger;
  /** Simulated NVMe-oF network shared with other simulators; default: one per process. */
  fabric?: NvmfFabric;
  /** The SPDK release to answer as (methods, fields, messages); default 24.01. */
  version?: SpdkVersion;
  /** How long bdev_nvme_detach_controller waits for its bdevs' users before -110; SPDK: 10 s. */
  detachTimeoutMs?: number;
  /** What to do where real spdk_tgt crashes; default: `kill()` (as SIGKILL would leave it). */
  onCrash?: () => void | Promise<void>;
}

/**
 * A faithful in-memory model of spdk_tgt v24.01's (or v25.09's) JSON-RPC, served on a real unix socket,
 * with real vhost controller sockets. See model.ts for the behaviour and server.ts for the
 * wire protocol. Modelling choices where the recording is silent:
 * - NVMe-oF moves no data: attach looks the listener up in an in-process `NvmfFabric` and
 *   creates `<name>n<nsid>` with the remote namespace's size and NGUID as UUID; across
 *   processes the attach fails with -19 as a port nobody listens on does.
 * - A vhost session is an accepted connection; there is no vhost-user protocol, so sessions
 *   report `started: false`. Deleting a controller closes its sessions.
 * - A snapshot with more than one clone cannot be deleted (-32603 EPERM, as recorded); with
 *   exactly one clone it is merged into that clone, as SPDK's blobstore does.
 * - OCF: attaching a claimed base fails with -1 (the recording's case: the core is held by an
 *   external-snapshot clone); a cache below OCF's 20 MiB minimum fails to start the same way.
 */
export class SpdkSimulator {
  private readonly model: SpdkModel;
  private readonly vhost: VhostSockets;
  private readonly faults = new Faults();
  private readonly server: RpcServer;
  private readonly logger: Logger;
  private readonly fabric: NvmfFabric;
  private readonly waiters = new Set<() => void>();

  constructor(private readonly opts: SpdkSimulatorOptions) {
    this.logger = (opts.logger ?? silentLogger).child({ spdk_sim: opts.socketPath });
    const coreMask = parseCpumask(opts.cpumask ?? '0x1');
    if (coreMask === undefined || coreMask === 0n) throw new Error(`cpumask: "${opts.cpumask}" is not a hex core mask or a core list`);
    if (opts.pollIntervalMs !== undefined && (!Number.isFinite(opts.pollIntervalMs) || opts.pollIntervalMs < 0)) {
      throw new Error(`pollIntervalMs: must be a number >= 0, got ${opts.pollIntervalMs}`);
    }
    this.fabric = opts.fabric ?? defaultFabric;
    const store = new LvstoreStore(opts.stateDir);
    const log = this.logger;
    this.model = new SpdkModel({
      randomUuid: randomUUID,
      fileSize: (filename) => {
        try {
          const st = fs.statSync(filename);
          if (st.isDirectory()) throw rawErrno('EISDIR');
          return st.size;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw rawErrno('ENOENT');
          throw e;
        }
      },
      // Regular files have no detectable block size (SPDK asks the BLKSSZGET ioctl); a block
      // device is taken as 512-byte sectors, which Node cannot ask the kernel for.
      fileBlockSize: (filename) => {
        try {
          return fs.statSync(filename).isBlockDevice() ? 512 : undefined;
        } catch {
          return undefined;
        }
      },
      loadLvstore: (f) => store.load(f),
      saveLvstore: (f, meta) => store.save(f, meta),
      removeLvstore: (f) => store.remove(f),
      coreMask,
      vhostDir: opts.vhostDir,
      fabric: this.fabric,
      log: (event, fields) => log.info({ event, ...fields }, event),
      profile: versionProfile(opts.version ?? '24.01'),
      openSessions: (c) => this.vhost.sessions(c.socket).length,
      crash: (reason) => {
        log.error({ event: 'crashed', reason }, 'spdk_tgt would crash here: the simulator dies as it would');
        void (opts.onCrash ?? (() => this.kill()))();
      },
      ...(opts.detachTimeoutMs !== undefined ? { detachTimeoutMs: opts.detachTimeoutMs } : {}),
    });
    this.vhost = new VhostSockets(this.logger);
    const ctx: MethodContext = {
      model: this.model,
      bindVhostSocket: (c) => this.vhost.bind(c.name, c.socket),
      closeVhostSocket: (c) => this.vhost.close(c.socket),
      sessionsOf: (c) => this.vhost.sessions(c.socket),
      waitFor: (check, timeoutMs) => this.waitFor(check, timeoutMs),
    };
    this.server = new RpcServer(opts.socketPath, opts.pollIntervalMs ?? 0, ctx, this.faults, this.logger);
  }

  async start(): Promise<void> {
    await this.server.start();
    this.logger.info({ event: 'listening', socket: this.opts.socketPath, vhost_dir: this.opts.vhostDir }, 'spdk simulator listening');
  }

  /** Closes the RPC socket and every controller socket (their files are removed). */
  async stop(): Promise<void> {
    for (const wake of this.waiters) wake();
    await this.server.stop();
    await this.vhost.closeAll();
    this.fabric.unlistenAll(this.model);
    this.fabric.unwatch(this.model);
    this.logger.info({ event: 'stopped' }, 'spdk simulator stopped');
  }

  /**
   * As SIGKILL: the RPC socket and NVMe-oF listeners go away, nothing is cleaned up. Vhost
   * controller sockets stay bound (a killed spdk_tgt leaves its socket files behind; a new
   * target replaces them); `stop()` releases them later. Lvstores persisted in `stateDir`
   * come back when their aio bdev is created again.
   */
  async kill(): Promise<void> {
    for (const wake of this.waiters) wake();
    await this.server.stop();
    this.fabric.unlistenAll(this.model);
    this.fabric.unwatch(this.model);
    this.logger.info({ event: 'killed' }, 'spdk simulator killed');
  }

  /** Make the next `times` (default 1) calls of `method` fail as `action` says. */
  injectFault(fault: FaultSpec): void {
    this.faults.add(fault);
  }

  clearFaults(): void {
    this.faults.clear();
  }

  /** A copy of the model: bdevs, lvstores, lvols, controllers (with session counts), OCF, NVMe-oF. */
  snapshot(): ModelSnapshot {
    return this.model.snapshot((c) => this.vhost.sessions(c.socket).length);
  }

  private waitFor(check: () => boolean, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const finish = (ok: boolean): void => {
        clearInterval(poll);
        clearTimeout(timer);
        this.waiters.delete(wake);
        resolve(ok);
      };
      const wake = (): void => finish(check());
      const poll = setInterval(() => {
        if (check()) finish(true);
      }, 5);
      const timer = setTimeout(() => finish(check()), timeoutMs);
      this.waiters.add(wake);
    });
  }
}
