/**
 * A gRPC server on a unix socket, as virt-launcher's hook sidecars and plugin sidecars both
 * need: bind (replacing a stale socket of a crashed run), and a bounded graceful close that
 * removes the socket.
 */
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ValidationError } from '../api/errors.js';
import type { Logger } from '../log.js';

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

export type Callback = (err: grpc.ServiceError | null, value?: unknown) => void;

export function grpcError(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}

/**
 * Answers a domain-rewrite call of either protocol: the reply `answer` builds, or
 * INVALID_ARGUMENT for input we refuse (ValidationError) and INTERNAL for anything else.
 */
export function answerRewrite(method: string, logger: Logger, callback: Callback, answer: () => unknown): void {
  const started = process.hrtime.bigint();
  try {
    const reply = answer();
    logger.debug({ ms: Number(process.hrtime.bigint() - started) / 1e6 }, `${method} answered`);
    callback(null, reply);
  } catch (e) {
    if (e instanceof ValidationError) {
      logger.warn({ problems: e.problems }, `${method} refused`);
      callback(grpcError(grpc.status.INVALID_ARGUMENT, e.message));
    } else {
      logger.error({ err: e }, `${method} failed`);
      callback(grpcError(grpc.status.INTERNAL, `kubevirt-spdk: ${(e as Error).message}`));
    }
  }
}
