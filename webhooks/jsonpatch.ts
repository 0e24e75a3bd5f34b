import type { Operation } from 'fast-json-patch';

/** RFC 6901: `~` -> `~0`, `/` -> `~1` (annotation and resource keys contain `/`). */
export function escapePointerToken(token: string): string {
  return token.replace(/~/g, '~0').replace(/\//g, '~1');
}

export function pointer(path: readonly string[]): string {
  return path.map((p) => `/${escapePointerToken(p)}`).join('');
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The value at `path` in `root`, or undefined when any step is missing. */
export function getAt(root: unknown, path: readonly string[]): unknown {
  let cur: unknown = root;
  for (const seg of path) {
    if (!isObject(cur)) return undefined;
    cur = cur[seg];
  }
  return cur;
}

export class PatchPathError extends Error {
  override readonly name = 'PatchPathError';
  constructor(readonly path: readonly string[]) {
    super(`${path.join('.')}: must be an object`);
  }
}

/**
 * The one operation that makes `root[path] === value`, creating missing parents in a single
 * `add` (JSON Patch does not create parents by itself); undefined when it already holds.
 * Throws PatchPathError when a parent exists but is not an object.
 */
export function setAt(root: unknown, path: readonly string[], value: unknown): Operation | undefined {
  let cur: unknown = root;
  for (let i = 0; i < path.length; i++) {
    if (!isObject(cur)) throw new PatchPathError(path.slice(0, i));
    const seg = path[i] as string;
    const next = cur[seg];
    const isLeaf = i === path.length - 1;
    if (next === undefined || (next === null && !isLeaf)) {
      let nested: unknown = value;
      for (let j = path.length - 1; j > i; j--) nested = { [path[j] as string]: nested };
      return { op: next === null ? 'replace' : 'add', path: pointer(path.slice(0, i + 1)), value: nested };
    }
    if (isLeaf) {
      return JSON.stringify(next) === JSON.stringify(value) ? undefined : { op: 'replace', path: pointer(path), value };
    }
    cur = next;
  }
  return undefined;
}
