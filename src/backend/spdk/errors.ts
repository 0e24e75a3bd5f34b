import { SpdkError } from '../../spdk/errors.js';
import { BackendError } from '../types.js';

const KIND_OF: Record<SpdkError['kind'], BackendError['kind']> = {
  exists: 'invalid',
  notFound: 'notFound',
  busy: 'busy',
  notPermitted: 'busy',
  invalidParams: 'invalid',
  noSpace: 'noSpace',
  timeout: 'transport',
  methodNotFound: 'internal',
  internal: 'internal',
  transport: 'transport',
};

/**
 * The spdk driver's one error mapping: an SPDK (or any) failure as the port reports it (see
 * BackendError in ../types.ts for what a caller does with each kind); `what` says which step
 * failed. Every mapping here has this signature: `(err, what)`.
 */
export function toBackendError(e: unknown, what: string): BackendError {
  if (e instanceof BackendError) return e;
  if (e instanceof SpdkError) return new BackendError(`${what}: ${e.message}`, KIND_OF[e.kind], { cause: e });
  if (e instanceof Error && e.name === 'AbortError') return new BackendError(`${what}: aborted`, 'transport', { cause: e });
  return new BackendError(`${what}: ${e instanceof Error ? e.message : String(e)}`, 'internal', { cause: e });
}
