/** A real gRPC client of the hook API over a unix socket, as virt-launcher would call it. */
import * as grpc from '@grpc/grpc-js';
import { hookServices, type CallbackVersion } from '../../../src/sidecar/protos.js';

type Unary = (req: object, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;

function unary(client: grpc.Client, method: string, req: object): Promise<unknown> {
  const fn = (client as unknown as Record<string, Unary | undefined>)[method];
  if (!fn) throw new Error(`no method ${method} on the client`);
  // virt-launcher gives Info 1 s; a generous deadline keeps a broken server from hanging the test.
  const deadline = new Date(Date.now() + 10_000);
  return new Promise((resolve, reject) => fn.call(client, req, { deadline }, (err, res) => (err ? reject(err) : resolve(res))));
}

export interface HookClient {
  info(): Promise<unknown>;
  call(version: CallbackVersion, method: string, req: object): Promise<unknown>;
  close(): void;
}

export function hookClient(socketPath: string): HookClient {
  const services = hookServices();
  const target = `unix://${socketPath}`;
  const creds = grpc.credentials.createInsecure();
  const info = new services.info(target, creds);
  const callbacks: Record<CallbackVersion, grpc.Client> = {
    v1alpha1: new services.callbacks.v1alpha1(target, creds),
    v1alpha2: new services.callbacks.v1alpha2(target, creds),
    v1alpha3: new services.callbacks.v1alpha3(target, creds),
  };
  return {
    info: () => unary(info, 'Info', {}),
    call: (version, method, req) => unary(callbacks[version], method, req),
    close: () => {
      info.close();
      for (const c of Object.values(callbacks)) c.close();
    },
  };
}

/** The gRPC status code and details of a rejected call. */
export async function rejection(p: Promise<unknown>): Promise<{ code: number; details: string }> {
  try {
    await p;
  } catch (e) {
    const err = e as grpc.ServiceError;
    return { code: err.code, details: err.details };
  }
  throw new Error('the call succeeded but was expected to fail');
}

interface InfoResult {
  name: string;
  hookPoints: Array<{ name: string; priority: number }>;
  versions: string[];
}

interface Registered {
  socketPath: string;
  version: CallbackVersion;
}

/**
 * virt-launcher's hook manager as upstream KubeVirt writes it (pkg/hooks/manager.go), played
 * over the real socket: collect every socket in the hooks directory, ask Info (1 s deadline),
 * keep the newest version both sides speak (v1alpha3, v1alpha2, v1alpha1 in that order),
 * register the callback under each hook point it lists; OnDefineDomain chains the domain
 * through the OnDefineDomain callbacks; Shutdown calls v1alpha3 Shutdown on the callbacks
 * registered under "Shutdown" (and on nothing else). `speaks` narrows the launcher's own
 * versions to play an older KubeVirt (before v1.2.0: v1alpha1 and v1alpha2 only).
 */
export class VirtLauncherHooks {
  readonly perHookPoint = new Map<string, Registered[]>();
  private readonly clients: grpc.Client[] = [];

  constructor(private readonly speaks: readonly CallbackVersion[] = ['v1alpha3', 'v1alpha2', 'v1alpha1']) {}

  /** Registers the sidecar on one socket; throws like the manager when no version is shared. */
  async collect(socketPath: string): Promise<Registered> {
    const services = hookServices();
    const info = new services.info(`unix://${socketPath}`, grpc.credentials.createInsecure());
    this.clients.push(info);
    const res = await new Promise<InfoResult>((resolve, reject) =>
      (info as unknown as Record<string, Unary>).Info?.call(info, {}, { deadline: new Date(Date.now() + 1000) }, (err, r) =>
        err ? reject(err) : resolve(r as InfoResult),
      ),
    );
    const version = this.speaks.find((v) => res.versions.includes(v));
    if (version === undefined) throw new Error(`Hook sidecar does not expose a supported version. Exposed versions: ${res.versions.join(',')}`);
    const reg = { socketPath, version };
    for (const hp of res.hookPoints) this.perHookPoint.set(hp.name, [...(this.perHookPoint.get(hp.name) ?? []), reg]);
    return reg;
  }

  private client(reg: Registered): grpc.Client {
    const c = new (hookServices().callbacks[reg.version])(`unix://${reg.socketPath}`, grpc.credentials.createInsecure());
    this.clients.push(c);
    return c;
  }

  async onDefineDomain(domainXML: Buffer, vmiJSON: Buffer): Promise<Buffer> {
    let xml = domainXML;
    for (const reg of this.perHookPoint.get('OnDefineDomain') ?? []) {
      const res = (await unary(this.client(reg), 'OnDefineDomain', { domainXML: xml, vmi: vmiJSON })) as { domainXML: Buffer };
      xml = res.domainXML;
    }
    return xml;
  }

  /** Returns how many sidecars were asked to shut down. */
  async shutdown(): Promise<number> {
    let n = 0;
    for (const reg of this.perHookPoint.get('Shutdown') ?? []) {
      // The manager only knows Shutdown in v1alpha3 and logs "Unsupported callback version" otherwise.
      if (reg.version !== 'v1alpha3') continue;
      await unary(this.client(reg), 'Shutdown', {});
      n++;
    }
    return n;
  }

  close(): void {
    for (const c of this.clients) c.close();
  }
}
