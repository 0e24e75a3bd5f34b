import { BackendError } from '../types.js';
import { QmpError } from './qmp.js';

/** Maps QMP failures onto the backend's error kinds, keeping QMP's text. */
export function toBackendError(err: unknown, what: string): BackendError {
  if (err instanceof BackendError) return err;
  if (err instanceof QmpError) {
    if (err.kind !== 'command') return new BackendError(`${what}: ${err.message}`, 'transport', { cause: err });
    const d = err.desc;
    const kind: BackendError['kind'] =
      err.errorClass === 'DeviceNotFound' || /no such file|not found|cannot find|failed to find/i.test(d)
        ? 'notFound'
        : /in use|busy|lock|is used/i.test(d)
          ? 'busy'
          : /no space/i.test(d)
            ? 'noSpace'
            : /invalid|must be|parameter|expected|out of range|read-only/i.test(d)
              ? 'invalid'
              : 'internal';
    return new BackendError(`${what}: ${err.message}`, kind, { cause: err });
  }
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const msg = err instanceof Error ? err.message : String(err);
  if (code === 'ENOENT') return new BackendError(`${what}: ${msg}`, 'notFound', { cause: err });
  if (code === 'ENOSPC') return new BackendError(`${what}: ${msg}`, 'noSpace', { cause: err });
  return new BackendError(`${what}: ${msg}`, 'internal', { cause: err });
}

export const isGone = (err: unknown): boolean => err instanceof BackendError && err.kind === 'notFound';
