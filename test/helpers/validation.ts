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
