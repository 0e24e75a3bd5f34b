import type { ZodError, ZodIssue } from 'zod';

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

/** One line per problem, each naming the field and the rule. */
export function formatZodError(prefix: string, err: ZodError): string[] {
  return err.issues.map((issue) => `${formatPath(prefix, issue.path) || '(root)'}: ${issueMessage(issue)}`);
}

/** A validation failure of user input: the messages say which field broke which rule. */
export class ValidationError extends Error {
  override readonly name = 'ValidationError';
  constructor(readonly problems: string[]) {
    super(problems.join('; '));
  }
}
