/**
 * Cache-aware placement, as a pure function: a VMI whose images some nodes already hold gets a
 * *preferred* node affinity toward those nodes, never a required one, so the scheduler puts it
 * where the image is when it can and anywhere else (where the disk starts lazily) when it
 * cannot. The user's own affinity is kept as it is.
 */

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
  preference: { matchFields: Array<{ key: 'metadata.name'; operator: 'In'; values: string[] }> };
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
 * Our terms: one per image that some node holds, matched by node name (`metadata.name`, not
 * the hostname label, which may differ from it). The total weight is shared among them, so a
 * node holding every image gets `weight` and the user's own preferences keep their relative
 * importance however many images the VMI has.
 */
export function cacheAffinityTerms(images: readonly ImageNodes[], weight: number): PreferredTerm[] {
  const seen = new Set<string>();
  const withNodes = images.filter((i) => i.nodes.length > 0 && !seen.has(i.image) && seen.add(i.image));
  if (weight <= 0 || withNodes.length === 0) return [];
  const each = Math.max(1, Math.floor(Math.min(weight, 100) / withNodes.length));
  return withNodes.map((i) => ({ weight: each, preference: { matchFields: [{ key: 'metadata.name', operator: 'In', values: [...new Set(i.nodes)].sort() }] } }));
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
