import { z } from 'zod';
import { LIMITS } from './limits.js';

/**
 * A Kubernetes label selector (metav1.LabelSelector: matchLabels and matchExpressions, ANDed),
 * with the API server's syntax rules for keys and values and our bounds on its size, and the
 * one function that evaluates it (the controller and the node agent must agree on it).
 */

/** A label name segment, or a value when not empty: 63 chars, alphanumeric at both ends, `-_.` inside. */
const NAME_SEGMENT = /^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
/** A DNS-1123 subdomain, the optional prefix of a label key. */
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export function labelKeyProblem(key: string): string | undefined {
  const slash = key.indexOf('/');
  const prefix = slash >= 0 ? key.slice(0, slash) : undefined;
  const name = slash >= 0 ? key.slice(slash + 1) : key;
  const shown = JSON.stringify(key.length > 80 ? `${key.slice(0, 80)}...` : key);
  if (prefix !== undefined && (prefix.length === 0 || prefix.length > 253 || !DNS1123_SUBDOMAIN.test(prefix))) {
    return `label key ${shown}: its prefix must be a DNS subdomain of at most 253 characters`;
  }
  if (!NAME_SEGMENT.test(name)) return `label key ${shown}: its name must be 1-63 characters, alphanumeric at both ends, with - _ . inside`;
  return undefined;
}

export function labelValueProblem(value: string): string | undefined {
  if (value === '' || NAME_SEGMENT.test(value)) return undefined;
  return `label value ${JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}...` : value)}: must be at most 63 characters, alphanumeric at both ends, with - _ . inside`;
}

const LabelKey = z.string().superRefine((k, ctx) => {
  const p = labelKeyProblem(k);
  if (p) ctx.addIssue({ code: z.ZodIssueCode.custom, message: p });
});
const LabelValue = z.string().superRefine((v, ctx) => {
  const p = labelValueProblem(v);
  if (p) ctx.addIssue({ code: z.ZodIssueCode.custom, message: p });
});

const RequirementSchema = z
  .object({
    key: LabelKey.describe('Label key (`[prefix/]name`, as in Kubernetes).'),
    operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']).describe('`In`/`NotIn` a list of values (which must not be empty), `Exists`/`DoesNotExist` (no values).'),
    values: z.array(LabelValue.describe('A label value.')).max(LIMITS.maxSelectorValues).optional().describe('Values for `In` and `NotIn`.'),
  })
  .strict()
  .superRefine((r, ctx) => {
    const n = r.values?.length ?? 0;
    if ((r.operator === 'In' || r.operator === 'NotIn') && n === 0) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['values'], message: `must not be empty with operator ${r.operator}` });
    if ((r.operator === 'Exists' || r.operator === 'DoesNotExist') && n > 0) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['values'], message: `must be empty with operator ${r.operator}` });
  });

export const LabelSelectorSchema = z
  .object({
    matchLabels: z
      .record(z.string(), z.string())
      .superRefine((m, ctx) => {
        const keys = Object.keys(m);
        if (keys.length > LIMITS.maxSelectorTerms) {
          ctx.addIssue({ code: z.ZodIssueCode.custom, message: `must have at most ${LIMITS.maxSelectorTerms} entries, found ${keys.length}` });
          return;
        }
        for (const k of keys) {
          // The field name shown is the key, cut short: a hostile key is not echoed whole.
          const at = k.length > 80 ? `${k.slice(0, 80)}...` : k;
          const p = labelKeyProblem(k) ?? labelValueProblem(m[k] as string);
          if (p) ctx.addIssue({ code: z.ZodIssueCode.custom, path: [at], message: p });
        }
      })
      .optional()
      .describe(`Labels a node must have, with these values (at most ${LIMITS.maxSelectorTerms}).`),
    matchExpressions: z.array(RequirementSchema.describe('One requirement on a label.')).max(LIMITS.maxSelectorTerms).optional().describe('Requirements a node must meet, all of them.'),
  })
  .strict();

export type LabelSelector = z.output<typeof LabelSelectorSchema>;

/**
 * Whether a validated selector selects an object with these labels. As in Kubernetes, an empty
 * selector selects everything, `NotIn` and `DoesNotExist` select objects without the key.
 */
export function matchesSelector(selector: LabelSelector, labels: Readonly<Record<string, string>>): boolean {
  const has = (k: string): boolean => Object.prototype.hasOwnProperty.call(labels, k);
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (!has(k) || labels[k] !== v) return false;
  for (const r of selector.matchExpressions ?? []) {
    const present = has(r.key);
    const values = r.values ?? [];
    switch (r.operator) {
      case 'In':
        if (!present || !values.includes(labels[r.key] as string)) return false;
        break;
      case 'NotIn':
        if (present && values.includes(labels[r.key] as string)) return false;
        break;
      case 'Exists':
        if (!present) return false;
        break;
      case 'DoesNotExist':
        if (present) return false;
        break;
    }
  }
  return true;
}

/** Labels as read from an API object: only string values count (anything else is not a label). */
export function labelsOf(obj: unknown): Record<string, string> {
  const raw = (obj as { metadata?: { labels?: unknown } } | null)?.metadata?.labels;
  const out: Record<string, string> = {};
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return out;
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) if (typeof v === 'string') out[k] = v;
  return out;
}
