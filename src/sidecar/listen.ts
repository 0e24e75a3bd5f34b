/**
 * A gRPC server on a unix socket, as virt-launcher's hook sidecars and plugin sidecars both
 * need: bind (replacing a stale socket of a crashed run), and a bounded graceful close that
 * removes the socket.
 */
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';

/** Running calls get this long on close; virt-launcher's own deadlines are shorter anyway. */
const CLOSE_GRACE_MS = 5000;

export async function listenUnix(server: grpc.Server, socketPath: string): Promise<void> {
  await mkdir(path.dirname(socketPath), { recursive: true });
  // A leftover socket of a crashed run with the same name would make bind fail.
  await rm(socketPath, { force: true });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
}

/** Stops accepting calls, lets running ones finish (bounded), removes the socket. */
export async function closeUnix(server: grpc.Server, socketPath: string): Promise<void> {
  await new Promise<void>((resolve) => {
    const force = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, CLOSE_GRACE_MS);
    server.tryShutdown(() => {
      clearTimeout(force);
      resolve();
    });
  });
  await rm(socketPath, { force: true });
}
