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
