import { expect } from 'vitest';
import { ValidationError } from '../../src/api/errors.js';

/** The problems of the ValidationError `fn` throws; fails the test when it throws none. */
export function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    if (e instanceof ValidationError) return e.problems;
    throw e;
  }
  throw new Error('expected a ValidationError');
}

/** What `p` rejects with, checked to be an instance of `type`; a `p` that resolves fails the check. */
export async function rejectionOf<E extends Error>(p: Promise<unknown>, type: new (...args: never[]) => E): Promise<E> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(type);
  return err as E;
}
