/**
 * A stand-in for the kubelet's device manager that speaks the real v1beta1 protocol over
 * unix sockets: serves Registration on <dir>/kubelet.sock and calls the registered plugin
 * back on <dir>/<endpoint>. `restart()` does what a kubelet restart does to the directory.
 */
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadDevicePluginProto } from '../../deviceplugin/proto.js';
import type { RegisterRequest__Output } from '../../deviceplugin/generated/deviceplugin/v1beta1/RegisterRequest.js';
import type { DevicePluginClient } from '../../deviceplugin/generated/deviceplugin/v1beta1/DevicePlugin.js';
import type { Device__Output } from '../../deviceplugin/generated/deviceplugin/v1beta1/Device.js';
import type { AllocateResponse__Output } from '../../deviceplugin/generated/deviceplugin/v1beta1/AllocateResponse.js';
import type { DevicePluginOptions__Output } from '../../deviceplugin/generated/deviceplugin/v1beta1/DevicePluginOptions.js';

export interface DeviceWatch {
  /** The next device list the plugin sends (waits up to timeoutMs). */
  next(timeoutMs?: number): Promise<Device__Output[]>;
  close(): void;
}

export class FakeKubelet {
  readonly registrations: RegisterRequest__Output[] = [];
  private server: grpc.Server | undefined;
  private waiters: Array<() => void> = [];
  private clients: grpc.Client[] = [];

  private constructor(readonly dir: string) {}

  static async start(dir: string): Promise<FakeKubelet> {
    const k = new FakeKubelet(dir);
    await k.listen();
    return k;
  }

  get socketPath(): string {
    return path.join(this.dir, 'kubelet.sock');
  }

  private async listen(): Promise<void> {
    const server = new grpc.Server();
    server.addService(loadDevicePluginProto().v1beta1.Registration.service, {
      Register: (call: grpc.ServerUnaryCall<RegisterRequest__Output, object>, cb: grpc.sendUnaryData<object>) => {
        if (call.request.version !== 'v1beta1') {
          cb({ code: grpc.status.INVALID_ARGUMENT, details: `unsupported version ${call.request.version}` });
          return;
        }
        this.registrations.push(call.request);
        cb(null, {});
        const w = this.waiters;
        this.waiters = [];
        w.forEach((f) => f());
      },
    });
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    this.server = server;
  }

  /** Resolves with the n-th registration (1-based) once it arrived. */
  async waitForRegistration(n: number, timeoutMs = 10_000): Promise<RegisterRequest__Output> {
    const deadline = Date.now() + timeoutMs;
    while (this.registrations.length < n) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`fake kubelet: registration #${n} did not arrive within ${timeoutMs} ms (have ${this.registrations.length})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.registrations[n - 1] as RegisterRequest__Output;
  }

  /** A client of the most recently registered plugin, as kubelet dials it. */
  plugin(): DevicePluginClient {
    const reg = this.registrations.at(-1);
    if (!reg) throw new Error('fake kubelet: no plugin registered');
    const proto = loadDevicePluginProto();
    const client = new proto.v1beta1.DevicePlugin(`unix://${path.join(this.dir, reg.endpoint)}`, grpc.credentials.createInsecure());
    this.clients.push(client);
    return client;
  }

  async options(): Promise<DevicePluginOptions__Output> {
    const c = this.plugin();
    return new Promise((resolve, reject) => c.GetDevicePluginOptions({}, (err, res) => (err || !res ? reject(err) : resolve(res))));
  }

  async allocate(containers: string[][]): Promise<AllocateResponse__Output> {
    const c = this.plugin();
    return new Promise((resolve, reject) =>
      c.Allocate({ container_requests: containers.map((devices_ids) => ({ devices_ids })) }, (err, res) => (err || !res ? reject(err) : resolve(res))),
    );
  }

  async preStart(ids: string[], timeoutMs = 30_000): Promise<void> {
    const c = this.plugin();
    return new Promise((resolve, reject) =>
      c.PreStartContainer({ devices_ids: ids }, { deadline: Date.now() + timeoutMs }, (err) => (err ? reject(err) : resolve())),
    );
  }

  watch(): DeviceWatch {
    const stream = this.plugin().ListAndWatch({});
    const queue: Device__Output[][] = [];
    let wake: (() => void) | undefined;
    let failure: Error | undefined;
    stream.on('data', (r: { devices: Device__Output[] }) => {
      queue.push(r.devices);
      wake?.();
    });
    stream.on('error', (e: Error) => {
      failure = e;
      wake?.();
    });
    return {
      next: async (timeoutMs = 5000) => {
        const deadline = Date.now() + timeoutMs;
        while (queue.length === 0) {
          if (failure) throw failure;
          const left = deadline - Date.now();
          if (left <= 0) throw new Error(`fake kubelet: no device list within ${timeoutMs} ms`);
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, left);
            wake = () => {
              clearTimeout(t);
              resolve();
            };
          });
          wake = undefined;
        }
        return queue.shift() as Device__Output[];
      },
      close: () => stream.cancel(),
    };
  }

  /** Kubelet restart: stop, wipe every file of the directory, listen on a new kubelet.sock. */
  async restart(): Promise<void> {
    this.stopServer();
    for (const f of await readdir(this.dir)) await rm(path.join(this.dir, f), { recursive: true, force: true });
    await this.listen();
  }

  private stopServer(): void {
    this.server?.forceShutdown();
    this.server = undefined;
  }

  async stop(): Promise<void> {
    for (const c of this.clients) c.close();
    this.clients = [];
    this.stopServer();
    await rm(this.socketPath, { force: true });
  }
}
