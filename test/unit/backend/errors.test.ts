import { describe, expect, it } from 'vitest';
import { BACKEND_ERROR_KINDS, BackendError, classifiedError, isTransientError } from '../../../src/backend/types.js';
import { toBackendError } from '../../../src/backend/spdk/errors.js';
import { SpdkError } from '../../../src/spdk/errors.js';

describe('BackendError: transience is part of the port', () => {
  it('only busy and transport are transient', () => {
    const transient = BACKEND_ERROR_KINDS.filter((k) => new BackendError('x', k).transient);
    expect(transient).toEqual(['busy', 'transport']);
  });

  it("the driver's mapping decides: the outermost classified error in the cause chain", () => {
    const busyUnder = new SpdkError('bdev_lvol_clone', -16, 'Device or resource busy', 'busy');
    expect(isTransientError(new BackendError('refused', 'invalid', { cause: busyUnder }))).toBe(false);
    expect(isTransientError(new Error('wrapped', { cause: new BackendError('lost', 'transport') }))).toBe(true);
    expect(isTransientError(new Error('plain'))).toBe(false);
    expect(classifiedError(new Error('x', { cause: busyUnder }))?.kind).toBe('busy');
  });

  it('the spdk mapping turns SPDK errors into port kinds with the same transience', () => {
    const cases: Array<[SpdkError['kind'], boolean]> = [
      ['busy', true],
      ['transport', true],
      ['timeout', true],
      ['notPermitted', true],
      ['invalidParams', false],
      ['notFound', false],
      ['noSpace', false],
      ['internal', false],
    ];
    for (const [kind, transient] of cases) {
      const e = toBackendError(new SpdkError('m', -1, 'msg', kind), 'step');
      expect([kind, e.transient]).toEqual([kind, transient]);
      expect(e.message).toMatch(/^step: /);
    }
  });
});
