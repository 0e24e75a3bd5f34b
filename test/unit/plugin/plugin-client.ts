/**
 * virt-launcher's side of a VEP 190 sidecar domain hook, as upstream KubeVirt writes it
 * (pkg/virt-launcher/virtwrap/plugins/sidecar.go), played over the real socket: the socket path
 * must be a non-symlink under <base>/<plugin name>/, virt-launcher polls until it exists, then
 * calls DomainHookService.MutateDomain with domain_type "libvirt", the domain XML, the VMI JSON
 * and the invocation context, under the hook's timeout (30 s by default).
 */
import { lstat, stat } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { domainHookService } from '../../../src/plugin/protos.js';

export type InvocationContext = 'Boot' | 'MigrationSource' | 'MigrationTarget';

export interface MutateRequest {
  domain_type: string;
  domain: Buffer;
  vmi: Buffer;
  sidecar_context: { invocation_context: string } | null;
}

type Unary = (req: object, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;

export class VirtLauncherPluginHook {
  /** `baseDir` stands for /var/run/kubevirt-plugin. */
  constructor(
    private readonly baseDir: string,
    private readonly pluginName: string,
    private readonly socketPath: string,
  ) {}

  async waitForSocket(ms = 30_000): Promise<void> {
    const deadline = Date.now() + ms;
    for (;;) {
      try {
        await stat(this.socketPath);
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      if (Date.now() > deadline) throw new Error(`sidecar socket ${this.socketPath} not ready after ${ms} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  private async validateSocketPath(): Promise<void> {
    const info = await lstat(this.socketPath);
    if (info.isSymbolicLink()) throw new Error(`socket path ${this.socketPath} is a symlink, which is not allowed`);
    const pluginDir = `${this.baseDir}/${this.pluginName}/`;
    if (!path.normalize(this.socketPath).startsWith(pluginDir)) throw new Error(`socket path ${this.socketPath} is outside ${pluginDir}`);
  }

  /** The raw RPC, for requests virt-launcher would not send. */
  async call(req: MutateRequest, timeoutMs = 30_000): Promise<{ domain: Buffer }> {
    await this.validateSocketPath();
    const Client = domainHookService();
    const client = new Client(`unix://${this.socketPath}`, grpc.credentials.createInsecure());
    try {
      const fn = (client as unknown as Record<string, Unary>).MutateDomain;
      if (!fn) throw new Error('no MutateDomain on the client');
      return await new Promise((resolve, reject) =>
        fn.call(client, req, { deadline: new Date(Date.now() + timeoutMs) }, (err, res) => (err ? reject(err) : resolve(res as { domain: Buffer }))),
      );
    } finally {
      client.close();
    }
  }

  async mutateDomain(domainXML: Buffer, vmiJSON: Buffer, context: InvocationContext): Promise<Buffer> {
    return (await this.call({ domain_type: 'libvirt', domain: domainXML, vmi: vmiJSON, sidecar_context: { invocation_context: context } })).domain;
  }
}
