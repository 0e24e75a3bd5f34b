import { CORE_SCHEMA, load as loadPlainYaml } from 'js-yaml';
import { isMap, isPair, isScalar, isSeq, type Document, type Node, type YAMLError } from 'yaml';
import { formatPath } from './errors.js';

/**
 * Strict YAML for user input. The `yaml` library resolves what it can and only *warns* about
 * the rest (an unknown tag such as `!!js/function` becomes a plain string; `parse()` prints a
 * process warning). A value the user did not mean must not be accepted quietly, so every
 * warning and every error is a problem that names the field and the rule.
 */

/** Options for every parse of user YAML: duplicate keys are errors; no aliases (billion laughs). */
export const STRICT_YAML_OPTIONS = { uniqueKeys: true, maxAliasCount: 0 } as const;

/**
 * The deepest field whose node covers `offset`, as a path under the document root. A tag is
 * written before its node and lies outside the node's range: it belongs to the next node.
 */
function fieldAt(node: unknown, offset: number, path: Array<string | number>): Array<string | number> {
  if (isMap(node)) {
    for (const pair of node.items) {
      if (!isPair(pair)) continue;
      const key = isScalar(pair.key) ? String(pair.key.value) : '?';
      const k = pair.key as Node | null;
      const v = pair.value as Node | null;
      if (k?.range && offset < k.range[1]) return [...path, key];
      if (v?.range && offset < v.range[0]) return [...path, key];
      if (v?.range && offset < v.range[2]) return fieldAt(v, offset, [...path, key]);
    }
  } else if (isSeq(node)) {
    const items = node.items as Array<Node | null>;
    for (let i = 0; i < items.length; i++) {
      const range = items[i]?.range;
      if (range && offset < range[0]) return [...path, i];
      if (range && offset < range[2]) return fieldAt(items[i], offset, [...path, i]);
    }
  }
  return path;
}

/** What the user has to change, from the library's message ("Unresolved tag: X at line 3, column 15:"). */
function tagRule(e: YAMLError): string {
  const first = (e.message.split('\n')[0] ?? '').replace(/:$/, '');
  const where = / at (line \d+, column \d+)$/.exec(first)?.[1];
  const tag = first
    .replace(/ at line \d+, column \d+$/, '')
    .replace(/^Unresolved tag: /, '')
    .replace(/^tag:yaml.org,2002:/, '!!');
  return `YAML tag ${tag}${where ? ` (${where})` : ''} is not allowed: only plain values (strings, numbers, booleans, lists, mappings)`;
}

/**
 * Every error and warning of `doc`, one line each. Syntax errors are about the document (the
 * node ranges of broken YAML say little); an unresolved tag names the field it is on.
 */
export function yamlProblems(doc: Document, prefix: string): string[] {
  return [...doc.errors, ...doc.warnings].map((e) => {
    if (e.code !== 'TAG_RESOLVE_FAILED') return `${prefix || '(root)'}: not valid YAML: ${(e.message.split('\n')[0] ?? '').replace(/:$/, '')}`;
    return `${formatPath(prefix, fieldAt(doc.contents, e.pos[0], [])) || '(root)'}: ${tagRule(e)}`;
  });
}

/**
 * The common case fast: text that uses no tag, anchor, alias, directive or merge key is read
 * with js-yaml (YAML 1.2 core schema, duplicate keys are errors), about 9x faster than the
 * `yaml` library; the webhook parses every new annotation on its hot path. Anything else, and
 * anything js-yaml rejects, returns undefined: the caller takes the strict path, which also
 * words the error.
 */
export function readPlainYaml(text: string): { value: unknown } | undefined {
  if (/[!&*%]|<</.test(text)) return undefined;
  try {
    return { value: loadPlainYaml(text, { schema: CORE_SCHEMA }) };
  } catch {
    return undefined;
  }
}
