import { describe, expect, it } from 'vitest';
import { SpdkError, classifySpdkError, isRetryable, type SpdkErrorKind } from '../../../src/spdk/errors.js';
import { loadTranscript } from '../../helpers/fake-spdk.js';

/** The kind each recorded error must map to, keyed by the recording's note. */
const EXPECTED: Record<string, SpdkErrorKind> = {
  'unknown method': 'methodNotFound',
  'malloc duplicate name': 'exists',
  'malloc missing num_blocks': 'invalidParams',
  'unknown param': 'invalidParams',
  'get missing bdev': 'notFound',
  'get missing bdev with timeout': 'timeout',
  'aio missing file': 'notFound',
  'lvstore on claimed bdev': 'notPermitted',
  'get missing lvstore': 'notFound',
  'lvol duplicate': 'exists',
  'lvol too big thick': 'noSpace',
  'clone of non-snapshot': 'invalidParams',
  'delete snapshot with clones': 'notPermitted',
  'vhost duplicate ctrlr': 'exists',
  'vhost missing bdev': 'notFound',
  'vhost bad cpumask': 'invalidParams',
  'get missing controller': 'notFound',
  'delete missing controller': 'notFound',
  'delete clone ok': 'notFound',
  'inflate esnap clone (hydrate)': 'noSpace',
  'ocf write-through cache': 'internal',
  'batch request (not supported)': 'invalidParams',
  'empty params object on a no-param method': 'invalidParams',
};

describe('classifySpdkError against the v24.01 recording', () => {
  const errors = loadTranscript().filter((e) => e.response?.error !== undefined);

  it('covers every error reply in the recording', () => {
    expect(errors.length).toBeGreaterThan(20);
    expect(errors.map((e) => e.note).sort()).toEqual(Object.keys(EXPECTED).sort());
  });

  for (const [note, kind] of Object.entries(EXPECTED)) {
    it(`${note} -> ${kind}`, () => {
      const entry = errors.find((e) => e.note === note);
      const err = entry?.response?.error;
      expect(err, `recording has an error for "${note}"`).toBeDefined();
      expect(classifySpdkError(err!.code, err!.message)).toBe(kind);
    });
  }

  it('classifies the same condition alike whether SPDK sends errno or -32602 (File exists)', () => {
    expect(classifySpdkError(-17, 'File exists')).toBe(classifySpdkError(-32602, 'File exists'));
    expect(classifySpdkError(-19, 'No such device')).toBe(classifySpdkError(-32603, 'No such device'));
  });

  it('falls back to internal for an unknown code and message', () => {
    expect(classifySpdkError(-9999, 'something odd')).toBe('internal');
  });
});

describe('SpdkError', () => {
  it('keeps method, code, kind and the message exactly as SPDK sent it', () => {
    const e = new SpdkError('bdev_malloc_create', -17, 'File exists', 'exists');
    expect(e).toBeInstanceOf(Error);
    expect(e.rpcMessage).toBe('File exists');
    expect(e.message).toContain('bdev_malloc_create');
    expect(e.message).toContain('-17');
  });

  it('treats busy and transport as retryable, others not', () => {
    expect(isRetryable(new SpdkError('m', -16, 'Device or resource busy', 'busy'))).toBe(true);
    expect(isRetryable(new SpdkError('m', 0, 'lost', 'transport'))).toBe(true);
    expect(isRetryable(new SpdkError('m', -17, 'File exists', 'exists'))).toBe(false);
    expect(isRetryable(new Error('x'))).toBe(false);
  });
});
