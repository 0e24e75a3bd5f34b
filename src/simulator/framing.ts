/**
 * Finds where the next top-level JSON value in a stream buffer ends, as SPDK's JSON-RPC
 * server does: values are not delimited by newlines, they simply follow one another.
 * Returns `empty` for whitespace only, `incomplete` when more bytes are needed.
 */
export type ScanResult = { kind: 'value'; start: number; end: number } | { kind: 'incomplete' } | { kind: 'empty' };

const isSpace = (c: string): boolean => c === ' ' || c === '\n' || c === '\r' || c === '\t';

export function scanValue(s: string, from = 0): ScanResult {
  let i = from;
  while (i < s.length && isSpace(s[i] ?? '')) i++;
  if (i >= s.length) return { kind: 'empty' };
  const start = i;
  const first = s[i];
  if (first === '{' || first === '[') {
    let depth = 0;
    let inString = false;
    for (; i < s.length; i++) {
      const c = s[i];
      if (inString) {
        if (c === '\\') i++;
        else if (c === '"') inString = false;
        continue;
      }
      if (c === '"') inString = true;
      else if (c === '{' || c === '[') depth++;
      else if (c === '}' || c === ']') {
        depth--;
        if (depth === 0) return { kind: 'value', start, end: i + 1 };
      }
    }
    return { kind: 'incomplete' };
  }
  if (first === '"') {
    for (i = start + 1; i < s.length; i++) {
      if (s[i] === '\\') i++;
      else if (s[i] === '"') return { kind: 'value', start, end: i + 1 };
    }
    return { kind: 'incomplete' };
  }
  // A bare scalar (or garbage): it ends at whitespace or at the start of another value.
  for (; i < s.length; i++) {
    const c = s[i] ?? '';
    if (isSpace(c) || c === '{' || c === '[' || c === '"') return { kind: 'value', start, end: i };
  }
  return { kind: 'incomplete' };
}
