import { z, type ZodError, type ZodIssue } from 'zod';

/** `volumes[0].spdkVhostBlkDisk.capacity` from a zod issue path. */
export function formatPath(prefix: string, path: ReadonlyArray<string | number>): string {
  let out = prefix;
  for (const part of path) out += typeof part === 'number' ? `[${part}]` : out ? `.${part}` : part;
  return out;
}

function issueMessage(issue: ZodIssue): string {
  if (issue.code === 'unrecognized_keys') return `unknown field(s) ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
  return issue.message;
}

const TYPE_NAMES: Record<string, string> = {
  object: 'a mapping',
  array: 'a list',
  string: 'a string',
  number: 'a number',
  integer: 'an integer',
  boolean: 'true or false',
};

/**
 * zod's generic messages ("Required", "Expected string, received number") restated as rules a
 * user can act on. Messages that a schema sets itself take precedence over this map.
 */
export const apiErrorMap: z.ZodErrorMap = (issue, ctx) => {
  if (issue.code === z.ZodIssueCode.invalid_type) {
    if (issue.received === 'undefined') return { message: 'is required' };
    return { message: `must be ${TYPE_NAMES[issue.expected] ?? issue.expected}, not ${issue.received}` };
  }
  if (issue.code === z.ZodIssueCode.too_small && issue.type === 'string' && issue.minimum === 1) return { message: 'must not be empty' };
  if (issue.code === z.ZodIssueCode.too_big && issue.type === 'string') return { message: `must be at most ${String(issue.maximum)} characters` };
  return { message: ctx.defaultError };
};

/** One line per problem, each naming the field and the rule. */
export function formatZodError(prefix: string, err: ZodError): string[] {
  return err.issues.map((issue) => `${formatPath(prefix, issue.path) || '(root)'}: ${issueMessage(issue)}`);
}

/** A validation failure of user input: the messages say which field broke which rule. */
export class ValidationError extends Error {
  override readonly name: string = 'ValidationError';
  constructor(readonly problems: string[]) {
    super(problems.join('; '));
  }
}
