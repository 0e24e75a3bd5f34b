/**
 * Cache-aware placement, as a pure function: a VMI whose images some nodes already hold gets a
 * *preferred* node affinity toward those nodes, never a required one, so the scheduler puts it
 * where the image is when it can and anywhere else (where the disk starts lazily) when it
 * cannot. The user's own affinity is kept as it is.
 */
import { LIMITS } from '../src/api/limits.js';

/** On the VMI: the terms this webhook added, so that the next admission replaces exactly those. */
export const CACHE_AFFINITY_ANNOTATION = 'kubevirt-spdk.io/cache-affinity';
/** Default total weight of our terms (1..100 per term): below a user's strongest preference (100). */
export const DEFAULT_CACHE_AFFINITY_WEIGHT = 50;
export const PREFERRED_PATH = ['affinity', 'nodeAffinity', 'preferredDuringSchedulingIgnoredDuringExecution'] as const;

/** One image of the VMI and the nodes that hold it ready (CachedImage status.readyNodeNames). */
export interface ImageNodes {
  image: string;
  nodes: readonly string[];
}

export interface PreferredTerm {
  weight: number;
  preference: { matchFields: Array<{ key: 'metadata.name'; operator: 'In'; values: [string] }> };
}

export interface AffinityChange {
  /** The new preferred list (the user's terms, then ours), when it changes. */
  preferred?: unknown[];
  /** The new annotation value, when it changes; null: remove it (no term of ours any more). */
  annotation?: string | null;
  /** Why nothing was done although it should have been. */
  warning?: string;
}

/** JSON with sorted keys: terms compare equal whatever the key order the API server kept. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

/**
 * Our terms: one per node that holds some of the VMI's images, matched by node name
 * (`matchFields` `metadata.name`, which the API server allows with exactly one value per
 * requirement; the hostname label may differ from the name). A node holding all the images
 * weighs `weight`, one holding k of n weighs k/n of it (at least 1), so the user's own
 * preferences keep their relative importance however many images the VMI has. At most
 * `maxNodes` terms: the nodes that hold the most images, then by name.
 */
export function cacheAffinityTerms(images: readonly ImageNodes[], weight: number, maxNodes: number = LIMITS.maxReadyNodeNames): PreferredTerm[] {
  const distinct = new Map<string, Set<string>>();
  for (const i of images) if (i.nodes.length > 0 && !distinct.has(i.image)) distinct.set(i.image, new Set(i.nodes));
  const total = new Set(images.map((i) => i.image)).size;
  if (weight <= 0 || distinct.size === 0) return [];
  const held = new Map<string, number>();
  for (const nodes of distinct.values()) for (const n of nodes) held.set(n, (held.get(n) ?? 0) + 1);
  const w = Math.min(weight, 100);
  return [...held]
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .slice(0, maxNodes)
    .map(([node, k]) => ({ weight: Math.max(1, Math.round((w * k) / total)), preference: { matchFields: [{ key: 'metadata.name', operator: 'In', values: [node] }] } }));
}

/** The terms recorded in our annotation (anything unreadable: none, so nothing of the user's is removed). */
function recorded(annotation: unknown): string[] {
  if (typeof annotation !== 'string') return [];
  try {
    const v: unknown = JSON.parse(annotation);
    return Array.isArray(v) ? v.map(canonical) : [];
  } catch {
    return [];
  }
}

/**
 * The preferred list with our previous terms (those the annotation records, each removed once)
 * replaced by `terms`; a term already present is not added again. `existing` is the VMI's
 * `spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution` as it came.
 */
export function mergeCacheAffinity(existing: unknown, annotation: unknown, terms: readonly PreferredTerm[], field: string): AffinityChange {
  if (existing !== undefined && existing !== null && !Array.isArray(existing)) {
    return { warning: `${field}: is not a list; cache-aware placement skipped` };
  }
  const before = (existing ?? []) as unknown[];
  const stale = recorded(annotation);
  const kept: unknown[] = [];
  for (const t of before) {
    const i = stale.indexOf(canonical(t));
    if (i >= 0) stale.splice(i, 1);
    else kept.push(t);
  }
  const present = new Set(kept.map(canonical));
  const ours = terms.filter((t) => !present.has(canonical(t)));
  const after = [...kept, ...ours];
  const out: AffinityChange = {};
  if (canonical(after) !== canonical(before)) out.preferred = after;
  const text = terms.length ? JSON.stringify(terms) : undefined;
  if (text === undefined) {
    if (annotation !== undefined) out.annotation = null;
  } else if (text !== annotation) out.annotation = text;
  return out;
}
