/**
 * Configuration from zod schemas: each command (a composition root, src/cli/commands/) declares
 * one schema whose fields carry `.describe()` text, defaults and bounds; the argv parser (here),
 * `--help` and docs/configuration.md (src/cli/help.ts, src/cli/docs/) are all derived from it,
 * so a flag cannot be parsed, documented and checked in three different places. A leaf module:
 * components (src/agent/config.ts) declare their part of a schema with it.
 *
 * A field `fooBar` is the flag `--foo-bar`. Flag values arrive as text, so every non-boolean
 * field is a string schema, usually one of the typed values below (duration, quantity, port, ...)
 * that turn text into a number or object and say, on failure, which rule the text broke.
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { ValidationError, apiErrorMap } from './api/errors.js';
import { LIMITS } from './api/limits.js';
import { parseDuration, parseQuantity } from './api/quantity.js';

/** What a schema cannot say about a flag. */
export interface FlagMeta {
  /** Environment variable read when the flag is not given. */
  env?: string;
  /** The env fallback is not read when this boolean flag is set (e.g. NODE_NAME with --standalone). */
  envUnless?: string;
  /** One-letter alias (`-h`). */
  short?: string;
}

export interface CommandConfig<S extends z.ZodTypeAny = z.ZodTypeAny> {
  /** The subcommand (`kubevirt-spdk <name>`); its one-line summary is in ./registry.ts. */
  name: string;
  /** A ZodObject of flags, optionally wrapped in refinements/transforms for cross-flag rules. */
  schema: S;
  flags?: Readonly<Record<string, FlagMeta>>;
  /** Usage lines when `kubevirt-spdk <name> [flags]` plus the required ones is not enough. */
  synopsis?: readonly string[];
  /** Closing text of `--help` (exit statuses, ...). */
  notes?: string;
}

/** Defines a command; the identity function, for type inference. */
export function defineCommand<S extends z.ZodTypeAny>(c: CommandConfig<S>): CommandConfig<S> {
  return c;
}

/** Bad flags: every problem names the flag and the rule. */
export class FlagError extends ValidationError {
  override readonly name: string = 'FlagError';
  constructor(
    readonly command: string,
    problems: string[],
  ) {
    super(problems);
  }
}

// ---------------------------------------------------------------- typed values

interface ValueMeta {
  /** Placeholder in `--help` and the docs (`DURATION`, `PORT`). */
  value: string;
  /** The bound the value must keep, in words (shown beside the description). */
  rule?: string;
}

/**
 * Keyed by the innermost `z.string()` of a typed value: `.describe()`, `.default()` and
 * `.optional()` wrap or copy the outer schema, never that one.
 */
const VALUE_META = new WeakMap<z.ZodTypeAny, ValueMeta>();

type Parsed<T> = { ok: T } | { error: string };

/** The one primitive: text -> T, or a message that says what the text should have been. */
export function typed<T>(meta: ValueMeta, parse: (text: string) => Parsed<T>): z.ZodEffects<z.ZodString, T, string> {
  const base = z.string();
  VALUE_META.set(base, meta);
  return base.transform((text, ctx): T => {
    const r = parse(text);
    if ('error' in r) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: r.error });
      return z.NEVER;
    }
    return r.ok;
  });
}

/** A non-empty string (a path, a name, an address). */
export function text(value = 'STRING'): z.ZodEffects<z.ZodString, string, string> {
  return typed<string>({ value }, (t) => (t === '' ? { error: 'must not be empty' } : { ok: t }));
}

export function oneOf<const T extends readonly [string, ...string[]]>(values: T): z.ZodEffects<z.ZodString, T[number], string> {
  return typed<T[number]>({ value: values.join('|') }, (t) => ((values as readonly string[]).includes(t) ? { ok: t as T[number] } : { error: `"${t}" must be one of ${values.join(', ')}` }));
}

/** A whole number in [min, max]; `message` replaces the default complaint. */
export function int(o: { min?: number; max?: number; value?: string; message?: (t: string) => string } = {}): z.ZodEffects<z.ZodString, number, string> {
  const { min = 0, max = Number.MAX_SAFE_INTEGER } = o;
  const rule = max === Number.MAX_SAFE_INTEGER ? (min === 0 ? undefined : `>= ${min}`) : `${min}..${max}`;
  return typed<number>({ value: o.value ?? 'N', ...(rule ? { rule } : {}) }, (t) => {
    const n = Number(t);
    if (/^\d+$/.test(t) && n >= min && n <= max) return { ok: n };
    return { error: o.message?.(t) ?? (rule ? `${t} must be an integer in ${rule}` : `"${t}" must be a whole number`) };
  });
}

export function port(): z.ZodEffects<z.ZodString, number, string> {
  return int({ min: 0, max: 65535, value: 'PORT', message: (t) => `"${t}" is not a TCP port (0-65535)` });
}

/**
 * A Go duration (`30s`, `5m`, `1h30m`) in milliseconds, at most LIMITS.maxDurationMs (a Node
 * timer holds no more). `above`/`below` bound it further (exclusive); `bounds` says so in words
 * ("above 0 and below 30s"), for the error and the docs.
 */
export function duration(o: { above?: number; below?: number; bounds?: string } = {}): z.ZodEffects<z.ZodString, number, string> {
  const max = LIMITS.maxDurationMs;
  const days = Math.floor(max / 86_400_000);
  return typed<number>({ value: 'DURATION', rule: o.bounds ?? `at most ${days} days` }, (t) => {
    const ms = parseDuration(t);
    const outside = ms !== undefined && ((o.above !== undefined && ms <= o.above) || (o.below !== undefined && ms >= o.below));
    if (o.bounds && (ms === undefined || outside)) return { error: `${t} must be a duration ${o.bounds}` };
    if (ms === undefined) return { error: `${t} is not a duration (e.g. 30s, 5m)` };
    if (ms > max) return { error: `${t} is longer than the limit of ${max} ms (about ${days} days)` };
    return { ok: ms };
  });
}

/** A Kubernetes quantity (`64Gi`, `512M`, bytes when bare) in bytes. */
export function quantity(o: { min?: number; minText?: string } = {}): z.ZodEffects<z.ZodString, number, string> {
  const rule = o.minText ? `at least ${o.minText}` : undefined;
  return typed<number>({ value: 'QUANTITY', ...(rule ? { rule } : {}) }, (t) => {
    const bytes = parseQuantity(t);
    if (bytes === undefined) return { error: `"${t}" is not a quantity` };
    if (o.min !== undefined && bytes < o.min) return { error: `"${t}" must be a quantity of ${rule}` };
    return { ok: bytes };
  });
}

// ---------------------------------------------------------------- reading a schema

export interface FlagField {
  key: string;
  flag: string;
  boolean: boolean;
  value: string;
  rule?: string;
  /** As the user would write it (`30s`, `false`). */
  defaultText?: string;
  required: boolean;
  description?: string;
  meta: FlagMeta;
}

const kebab = (key: string): string => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

function objectOf(schema: z.ZodTypeAny): z.AnyZodObject {
  let s = schema;
  while (s instanceof z.ZodEffects) s = s._def.schema as z.ZodTypeAny;
  if (!(s instanceof z.ZodObject)) throw new Error('a command config schema must be a z.object() (optionally refined)');
  return s;
}

function field(key: string, schema: z.ZodTypeAny, meta: FlagMeta): FlagField {
  let s = schema;
  let description: string | undefined;
  let optional = false;
  let defaultValue: unknown;
  for (;;) {
    description ??= s.description;
    if (s instanceof z.ZodOptional) optional = true;
    else if (s instanceof z.ZodDefault) defaultValue = s._def.defaultValue();
    else if (!(s instanceof z.ZodEffects)) break;
    s = s instanceof z.ZodOptional ? (s.unwrap() as z.ZodTypeAny) : s instanceof z.ZodDefault ? (s._def.innerType as z.ZodTypeAny) : (s._def.schema as z.ZodTypeAny);
  }
  const boolean = s instanceof z.ZodBoolean;
  if (!boolean && !(s instanceof z.ZodString)) throw new Error(`flag --${kebab(key)}: a flag value is text or a boolean, not ${s.constructor.name}`);
  const vm = VALUE_META.get(s);
  return {
    key,
    flag: kebab(key),
    boolean,
    value: boolean ? '' : (vm?.value ?? 'STRING'),
    ...(vm?.rule ? { rule: vm.rule } : {}),
    ...(defaultValue !== undefined ? { defaultText: String(defaultValue) } : {}),
    required: !optional && defaultValue === undefined,
    ...(description !== undefined ? { description } : {}),
    meta,
  };
}

/** The flags of a command, in schema order. */
export function flagsOf(c: CommandConfig): FlagField[] {
  return Object.entries(objectOf(c.schema).shape as Record<string, z.ZodTypeAny>).map(([k, v]) => field(k, v, c.flags?.[k] ?? {}));
}

// ---------------------------------------------------------------- parsing

const HELP = new Set(['-h', '--help']);

/** True when argv asks for help (before a `--`). */
export function wantsHelp(argv: readonly string[]): boolean {
  const end = argv.indexOf('--');
  return (end === -1 ? argv : argv.slice(0, end)).some((a) => HELP.has(a));
}

/** Flag values already split from argv (or anywhere else), keyed by flag name, into the config. */
export function parseValues<S extends z.ZodTypeAny>(c: CommandConfig<S>, given: Readonly<Record<string, string | boolean | undefined>>, env: NodeJS.ProcessEnv): z.output<S> {
  const fields = flagsOf(c);
  const input: Record<string, unknown> = {};
  for (const f of fields) {
    const fromEnv = f.meta.env !== undefined && !(f.meta.envUnless !== undefined && given[f.meta.envUnless] === true) ? env[f.meta.env] : undefined;
    const v = given[f.flag] ?? fromEnv;
    if (v !== undefined) input[f.key] = v;
  }
  const r = c.schema.safeParse(input, { errorMap: apiErrorMap });
  if (r.success) return r.data as z.output<S>;
  const byKey = new Map(fields.map((f) => [f.key, f]));
  throw new FlagError(
    c.name,
    r.error.issues.map((i) => {
      const f = byKey.get(String(i.path[0] ?? ''));
      // A rule on the whole config words its own message (it may name several flags).
      return f ? `--${f.flag}: ${i.message}` : i.message;
    }),
  );
}

/** argv -> the command's config. Throws FlagError naming the flag and the rule. */
export function parseFlags<S extends z.ZodTypeAny>(c: CommandConfig<S>, argv: readonly string[], env: NodeJS.ProcessEnv = process.env): z.output<S> {
  const fields = flagsOf(c);
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: Object.fromEntries(fields.map((f) => [f.flag, { type: f.boolean ? 'boolean' : 'string', ...(f.meta.short ? { short: f.meta.short } : {}) }])) as Record<string, { type: 'boolean' | 'string'; short?: string }>,
      strict: true,
      allowPositionals: false,
    }) as { values: Record<string, string | boolean | undefined> });
  } catch (e) {
    // node:util's own words (unknown option, missing value, positional argument).
    if ((e as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS_')) throw new FlagError(c.name, [(e as Error).message]);
    throw e;
  }
  return parseValues(c, values, env);
}

/** A subcommand: its config and what it runs with the parsed config (the composition root). */
export interface Command<S extends z.ZodTypeAny = z.ZodTypeAny> extends CommandConfig<S> {
  run(config: z.output<S>): Promise<number>;
}
