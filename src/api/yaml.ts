import { CORE_SCHEMA, load as loadPlainYaml, type LoadOptions } from 'js-yaml';
import { Lexer, Parser, parseDocument, isMap, isPair, isScalar, isSeq, type Document, type Node, type YAMLError } from 'yaml';
import { ValidationError, formatPath } from './errors.js';

/**
 * Strict YAML for user input. The `yaml` library resolves what it can and only *warns* about
 * the rest (an unknown tag such as `!!js/function` becomes a plain string; `parse()` prints a
 * process warning). A value the user did not mean must not be accepted quietly, so every
 * warning and every error is a problem that names the field and the rule.
 */

/** Options for every parse of user YAML: duplicate keys are errors; no aliases (billion laughs). */
export const STRICT_YAML_OPTIONS = { uniqueKeys: true, maxAliasCount: 0 } as const;

/**
 * Size and depth limits of one piece of user YAML. The `yaml` library's composer recurses once
 * per nesting level: ~2,000 nested `[` (4 KB) abort the process (a V8 allocation failure, not
 * an exception). Every user YAML is checked against these before any composer sees it.
 */
export interface YamlLimits {
  /** Characters of text. */
  maxBytes: number;
  /** Nesting levels of collections. */
  maxDepth: number;
}

/** The volumes annotation: 26 volumes fit in a few KiB and nest 4 levels deep. */
export const ANNOTATION_YAML_LIMITS: YamlLimits = { maxBytes: 32 * 1024, maxDepth: 16 };
/** A whole file of the standalone mode (a VMI, a list of CachedImages). */
export const FILE_YAML_LIMITS: YamlLimits = { maxBytes: 4 * 1024 * 1024, maxDepth: 64 };

/** Lexer markers that stand for no source characters (document start, flow end, scalar). */
const NON_SOURCE_LEXEMES = new Set(['\u0002', '\u0018', '\u001f']);

/**
 * Refuses text over the size limit, and text nested deeper than the depth limit. Depth is read
 * from the CST parser's stack (iterative, linear, the real YAML grammar: quotes and comments
 * are what they are), stopping at the first level too deep.
 */
export function checkYamlLimits(text: string, field: string, limits: YamlLimits): void {
  const where = field || '(root)';
  if (text.length > limits.maxBytes) throw new ValidationError([`${where}: must be at most ${limits.maxBytes} characters, found ${text.length}`]);
  const parser = new Parser();
  let offset = 0;
  const tooDeep = (): boolean => parser.stack.length - 1 > limits.maxDepth;
  for (const lexeme of new Lexer().lex(text)) {
    for (const _ of parser.next(lexeme)) {
      // Finished documents are not kept: only the depth matters here.
    }
    if (tooDeep()) {
      const line = text.slice(0, offset).split('\n').length;
      throw new ValidationError([`${where}: YAML nests deeper than ${limits.maxDepth} levels (line ${line}): only plain values (strings, numbers, booleans, lists, mappings) a few levels deep`]);
    }
    if (!NON_SOURCE_LEXEMES.has(lexeme)) offset += lexeme.length;
  }
}

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
export function readPlainYaml(text: string, maxDepth = ANNOTATION_YAML_LIMITS.maxDepth): { value: unknown } | undefined {
  // js-yaml reads a negative zero as 0, the strict parser as -0: such text takes the strict path.
  if (/[!&*%]|<<|-\.?0(?![0-9]*[1-9])/.test(text)) return undefined;
  try {
    // js-yaml counts its own depth and throws past maxDepth: deep text goes to the checked path.
    // js-yaml 4.1.1+ reads maxDepth; its type definitions predate the option.
    const options: LoadOptions & { maxDepth: number } = { schema: CORE_SCHEMA, maxDepth };
    return { value: loadPlainYaml(text, options) };
  } catch {
    return undefined;
  }
}

/**
 * User YAML to a plain value, within `limits`: the one reader of tenant YAML (annotation,
 * standalone files). Plain text takes js-yaml (which stops at the depth limit itself);
 * anything else is checked for size and depth before the `yaml` library composes it.
 */
export function readUserYaml(text: string, prefix: string, limits: YamlLimits = ANNOTATION_YAML_LIMITS): unknown {
  // Callers hold parsed JSON: the type says string, the wire may not.
  if (typeof text !== 'string') throw new ValidationError([`${prefix || '(root)'}: must be a string`]);
  if (text.length > limits.maxBytes) checkYamlLimits(text, prefix, limits);
  const plain = readPlainYaml(text, limits.maxDepth);
  if (plain && plain.value !== undefined) return plain.value;
  checkYamlLimits(text, prefix, limits);
  return readStrictYaml(text, prefix);
}

function readStrictYaml(text: string, prefix: string): unknown {
  try {
    const parsed = parseDocument(text, STRICT_YAML_OPTIONS);
    const problems = yamlProblems(parsed, prefix);
    if (problems.length) throw new ValidationError(problems);
    return parsed.toJS({ maxAliasCount: 0 });
  } catch (e) {
    if (e instanceof ValidationError) throw e;
    throw new ValidationError([`${prefix}: not valid YAML: ${(e as Error).message.split('\n')[0]?.replace(/:$/, '')}`]);
  }
}
