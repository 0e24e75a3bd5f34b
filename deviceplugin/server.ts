/**
 * The kubelet device plugin for vhost slots: serves v1beta1.DevicePlugin on its own unix
 * socket in the kubelet's device-plugins directory, then registers with kubelet.sock there.
 * Kubelet wipes that directory when it restarts; we notice our socket gone (or a new
 * kubelet.sock) and serve + register again.
 */
import { watch, type FSWatcher } from 'node:fs';
import { mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { VHOST_SLOT_RESOURCE } from '../src/api/volumes.js';
import { silentLogger, type Logger } from '../src/log.js';
import { defaultMetrics, type Metrics } from '../src/metrics/metrics.js';
import type { HealthSource } from './health.js';
import { DEVICE_PLUGIN_API_VERSION, loadDevicePluginProto } from './proto.js';
import { SlotNotReadyError, waitForSlotReady } from './readiness.js';
import { SlotRequestError, containerAllocation, deviceList, requestedSlot, slotHostDir, slotIds } from './slots.js';
import type { DevicePluginHandlers } from './generated/deviceplugin/v1beta1/DevicePlugin.js';
import type { ListAndWatchResponse } from './generated/deviceplugin/v1beta1/ListAndWatchResponse.js';
import type { Empty__Output } from './generated/deviceplugin/v1beta1/Empty.js';
import type { ContainerAllocateResponse } from './generated/deviceplugin/v1beta1/ContainerAllocateResponse.js';

export const DEFAULT_PLUGIN_DIR = '/var/lib/kubelet/device-plugins';
export const KUBELET_SOCKET = 'kubelet.sock';
export const DEFAULT_ENDPOINT = 'kubevirt-spdk-vhost.sock';
/** Below kubelet's 30 s budget for PreStartContainer, so our message reaches the user. */
export const DEFAULT_PRESTART_TIMEOUT_MS = 25_000;

export interface DevicePluginServerOptions {
  /** The kubelet's device-plugins directory (holds kubelet.sock). */
  pluginDir?: string;
  /** Socket file name of this plugin inside pluginDir. */
  endpoint?: string;
  resourceName?: string;
  slotCount: number;
  /** Host directory holding one socket directory per slot. */
  vhostDir: string;
  /** The agent's state directory (slots/<slot>.json). */
  stateDir: string;
  health: HealthSource;
  preStartTimeoutMs?: number;
  readinessPollMs?: number;
  /** How often to check for a kubelet restart, besides the directory watch. */
  checkIntervalMs?: number;
  logger?: Logger;
  /** Slot gauges and allocation counter; the process-wide metrics by default. */
  metrics?: Metrics;
}

type StreamCall = grpc.ServerWritableStream<Empty__Output, ListAndWatchResponse>;

export class DevicePluginServer {
  readonly pluginDir: string;
  readonly endpoint: string;
  readonly resourceName: string;
  private readonly ids: string[];
  private readonly known: ReadonlySet<string>;
  private readonly logger: Logger;
  readonly metrics: Metrics;
  private server: grpc.Server | undefined;
  private streams = new Set<StreamCall>();
  private lastSent = '';
  private unsubscribeHealth: (() => void) | undefined;
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Inode of the kubelet.sock we registered with; a new one means kubelet restarted. */
  private registeredKubeletIno: number | undefined;
  private servingIno: number | undefined;
  /** Serialises serve/register so that a burst of directory events restarts us once. */
  private chain: Promise<void> = Promise.resolve();
  private readonly allocatedAt = new Map<string, number>();
  private readonly abort = new AbortController();
  private closed = false;
  /** How many times registration succeeded (tests and logs). */
  registrations = 0;

  constructor(private readonly opts: DevicePluginServerOptions) {
    this.pluginDir = opts.pluginDir ?? DEFAULT_PLUGIN_DIR;
    this.endpoint = opts.endpoint ?? DEFAULT_ENDPOINT;
    this.resourceName = opts.resourceName ?? VHOST_SLOT_RESOURCE;
    this.ids = slotIds(opts.slotCount);
    this.known = new Set(this.ids);
    this.logger = (opts.logger ?? silentLogger).child({ resource: this.resourceName });
    this.metrics = opts.metrics ?? defaultMetrics();
    this.metrics.slots.set(this.ids.length);
  }

  private updateHealthGauge(): void {
    this.metrics.slotsHealthy.set(this.opts.health.healthy() ? this.ids.length : 0);
  }

  get socketPath(): string {
    return path.join(this.pluginDir, this.endpoint);
  }
  get kubeletSocketPath(): string {
    return path.join(this.pluginDir, KUBELET_SOCKET);
  }

  /** Serves, then registers when kubelet is there (now or later). */
  async start(): Promise<void> {
    await mkdir(this.pluginDir, { recursive: true });
    await mkdir(this.opts.vhostDir, { recursive: true });
    this.unsubscribeHealth = this.opts.health.onChange(() => this.broadcast());
    this.updateHealthGauge();
    await this.serialised(async () => {
      await this.serve();
      // Kubelet may be down or restarting: the periodic check registers later.
      await this.register().catch((err: unknown) => this.logger.warn({ err }, 'registration failed; will retry'));
    });
    try {
      this.watcher = watch(this.pluginDir, () => this.check());
      this.watcher.on('error', (err) => this.logger.warn({ err }, 'device-plugins directory watch failed; polling only'));
    } catch (err) {
      this.logger.warn({ err }, 'cannot watch the device-plugins directory; polling only');
    }
    this.timer = setInterval(() => this.check(), this.opts.checkIntervalMs ?? 1000);
    this.timer.unref();
  }

  private serialised(fn: () => Promise<void>): Promise<void> {
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async inode(p: string): Promise<number | undefined> {
    try {
      return (await stat(p)).ino;
    } catch {
      return undefined;
    }
  }

  /** Called on directory events and on a timer: re-serve and re-register when needed. */
  private check(): void {
    if (this.closed) return;
    void this.serialised(async () => {
      if (this.closed) return;
      const [ours, kubelet] = await Promise.all([this.inode(this.socketPath), this.inode(this.kubeletSocketPath)]);
      if (ours === undefined || ours !== this.servingIno) {
        this.logger.info('plugin socket gone (kubelet restart?); serving again');
        await this.serveAndRegister();
      } else if (kubelet !== undefined && kubelet !== this.registeredKubeletIno) {
        this.logger.info('new kubelet socket; registering again');
        await this.register();
      }
    }).catch((err: unknown) => this.logger.warn({ err }, 'device plugin restart failed; will retry'));
  }

  private async serveAndRegister(): Promise<void> {
    await this.serve();
    await this.register();
  }

  private async serve(): Promise<void> {
    if (this.server) {
      // Kubelet opens a fresh ListAndWatch after re-registration; old streams are dead.
      for (const s of this.streams) s.end();
      this.streams.clear();
      this.server.forceShutdown();
      this.server = undefined;
    }
    await rm(this.socketPath, { force: true });
    const server = new grpc.Server();
    server.addService(loadDevicePluginProto().v1beta1.DevicePlugin.service, this.handlers());
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    this.server = server;
    this.servingIno = await this.inode(this.socketPath);
    this.registeredKubeletIno = undefined;
    this.logger.info({ socket: this.socketPath }, 'device plugin serving');
  }

  private async register(): Promise<void> {
    const kubeletIno = await this.inode(this.kubeletSocketPath);
    if (kubeletIno === undefined) {
      this.logger.info({ socket: this.kubeletSocketPath }, 'kubelet not there yet; will register when it is');
      return;
    }
    const proto = loadDevicePluginProto();
    const client = new proto.v1beta1.Registration(`unix://${this.kubeletSocketPath}`, grpc.credentials.createInsecure());
    try {
      await new Promise<void>((resolve, reject) =>
        client.Register(
          {
            version: DEVICE_PLUGIN_API_VERSION,
            endpoint: this.endpoint,
            resource_name: this.resourceName,
            options: { pre_start_required: true, get_preferred_allocation_available: false },
          },
          { deadline: Date.now() + 5000 },
          (err) => (err ? reject(err) : resolve()),
        ),
      );
    } finally {
      client.close();
    }
    this.registeredKubeletIno = kubeletIno;
    this.registrations++;
    this.logger.info({ endpoint: this.endpoint, slots: this.ids.length }, 'registered with kubelet');
  }

  private currentList(): ListAndWatchResponse {
    return { devices: deviceList(this.ids, this.opts.health.healthy()) };
  }

  private broadcast(): void {
    this.updateHealthGauge();
    const list = this.currentList();
    const text = JSON.stringify(list);
    if (text === this.lastSent) return;
    this.lastSent = text;
    this.logger.info({ healthy: this.opts.health.healthy() }, 'device health changed');
    for (const s of this.streams) s.write(list);
  }

  private handlers(): DevicePluginHandlers {
    return {
      GetDevicePluginOptions: (_call, cb) => cb(null, { pre_start_required: true, get_preferred_allocation_available: false }),

      ListAndWatch: (call) => {
        this.streams.add(call);
        const drop = (): void => {
          this.streams.delete(call);
        };
        call.on('cancelled', drop);
        call.on('close', drop);
        call.on('error', drop);
        const list = this.currentList();
        this.lastSent = JSON.stringify(list);
        call.write(list);
      },

      GetPreferredAllocation: (call, cb) => {
        // Not advertised (get_preferred_allocation_available: false); answered sensibly anyway.
        cb(null, {
          container_responses: call.request.container_requests.map((r) => ({
            deviceIDs: [...new Set([...r.must_include_deviceIDs, ...r.available_deviceIDs])].slice(0, Math.max(0, r.allocation_size)),
          })),
        });
      },

      Allocate: (call, cb) => {
        void (async () => {
          const responses: ContainerAllocateResponse[] = [];
          for (const [i, r] of call.request.container_requests.entries()) {
            const slot = requestedSlot(r.devices_ids, this.known, `container_requests[${i}]`);
            // The backend binds sockets inside; it must exist before the container mounts it.
            await mkdir(slotHostDir(this.opts.vhostDir, slot), { recursive: true, mode: 0o755 });
            this.allocatedAt.set(slot, Date.now());
            this.metrics.slotAllocations.inc();
            this.metrics.slotsAllocated.set(this.allocatedAt.size);
            this.logger.info({ slot }, 'allocated');
            responses.push(containerAllocation(this.opts.vhostDir, slot));
          }
          return responses;
        })().then(
          (container_responses) => cb(null, { container_responses }),
          (err: unknown) => cb(this.grpcError(err, 'Allocate')),
        );
      },

      PreStartContainer: (call, cb) => {
        void (async () => {
          const slot = requestedSlot(call.request.devices_ids, this.known, 'PreStartContainer');
          const log = this.logger.child({ slot });
          log.info('waiting for the agent to report the slot ready');
          await waitForSlotReady({
            stateDir: this.opts.stateDir,
            slot,
            timeoutMs: this.opts.preStartTimeoutMs ?? DEFAULT_PRESTART_TIMEOUT_MS,
            pollMs: this.opts.readinessPollMs,
            notBefore: this.allocatedAt.get(slot),
            signal: this.abort.signal,
          });
          log.info('slot ready; container may start');
        })().then(
          () => cb(null, {}),
          (err: unknown) => cb(this.grpcError(err, 'PreStartContainer')),
        );
      },
    };
  }

  private grpcError(err: unknown, method: string): Partial<grpc.ServiceError> {
    const code =
      err instanceof SlotRequestError ? grpc.status.INVALID_ARGUMENT : err instanceof SlotNotReadyError ? grpc.status.DEADLINE_EXCEEDED : grpc.status.INTERNAL;
    const message = (err as Error).message;
    this.logger.warn({ method, err: message }, `${method} failed`);
    return { code, details: message, message };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    clearInterval(this.timer);
    this.watcher?.close();
    this.unsubscribeHealth?.();
    await this.chain;
    for (const s of this.streams) s.end();
    this.streams.clear();
    const server = this.server;
    this.server = undefined;
    if (server) {
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => server.forceShutdown(), 2000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
    }
    await rm(this.socketPath, { force: true });
    this.logger.info('device plugin stopped');
  }
}
