import { z } from 'zod';
import { CachedImageSchema, cachedImageStatusOf, type Prefetch } from '../api/cachedimage.js';
import { labelsOf, matchesSelector } from '../api/labelselector.js';
import { LIMITS } from '../api/limits.js';

/**
 * The pure half of the cluster-wide controller: (CachedImages, NodeImageCaches, Nodes) -> the
 * `CachedImage.status` each image should have: `readyNodes` (how many nodes hold it ready),
 * `readyNodeNames` (a bounded, stable subset of them, for the webhook's cache-aware placement)
 * and `prefetchNodes` (the nodes that warm it for `spec.prefetch`: the node agents read only
 * this list, so selectors on Node labels are resolved here, where Nodes are watched).
 */

/** A NodeImageCache as far as the controller reads it; other fields (per-image progress) may come and go. */
const NodeCacheSchema = z.object({
  metadata: z.object({ name: z.string().min(1) }).passthrough(),
  status: z.object({ images: z.array(z.object({ name: z.string(), phase: z.string() }).passthrough()).default([]) }).passthrough().nullish(),
});

/** Image name -> the nodes whose NodeImageCache lists it ready (sorted), and the nodes that run an agent. */
export function nodeCacheIndex(caches: readonly unknown[]): { holders: Map<string, string[]>; agentNodes: Set<string> } {
  const holders = new Map<string, Set<string>>();
  const agentNodes = new Set<string>();
  for (const raw of caches) {
    const res = NodeCacheSchema.safeParse(raw);
    if (!res.success) continue;
    const node = res.data.metadata.name;
    agentNodes.add(node);
    for (const i of res.data.status?.images ?? []) {
      if (i.phase !== 'ready') continue;
      let s = holders.get(i.name);
      if (!s) holders.set(i.name, (s = new Set()));
      s.add(node);
    }
  }
  return { holders: new Map([...holders].map(([k, v]) => [k, [...v].sort()])), agentNodes };
}

/**
 * At most `max` of the `ready` nodes: those named before that are still ready first (the
 * webhook's affinity does not churn with every cache report), then the rest by name.
 */
export function chooseReadyNodeNames(ready: readonly string[], previous: readonly string[], max: number = LIMITS.maxReadyNodeNames): string[] {
  const isReady = new Set(ready);
  const out = new Set<string>();
  for (const n of previous) if (out.size < max && isReady.has(n)) out.add(n);
  for (const n of ready) if (out.size < max) out.add(n);
  return [...out].sort();
}

/** A node that may be asked to warm images. */
export interface Candidate {
  name: string;
  labels: Record<string, string>;
}

const NodeSchema = z.object({
  metadata: z.object({ name: z.string().min(1) }).passthrough(),
  spec: z.object({ unschedulable: z.boolean().nullish() }).passthrough().nullish(),
  status: z.object({ conditions: z.array(z.object({ type: z.string(), status: z.string() }).passthrough()).nullish() }).passthrough().nullish(),
});

/**
 * The nodes a prefetch may choose: Ready, schedulable (a cordoned node is being drained; VMs
 * will not land there) and running our agent (it has a NodeImageCache), sorted by name.
 */
export function prefetchCandidates(nodes: readonly unknown[], agentNodes: ReadonlySet<string>): Candidate[] {
  const out: Candidate[] = [];
  for (const raw of nodes) {
    const res = NodeSchema.safeParse(raw);
    if (!res.success) continue;
    const n = res.data;
    if (n.spec?.unschedulable === true || !agentNodes.has(n.metadata.name)) continue;
    if (!(n.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True')) continue;
    out.push({ name: n.metadata.name, labels: labelsOf(raw) });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

/** FNV-1a: a stable tie-break that spreads different images over different nodes. */
function spreadHash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

export interface PrefetchRequest {
  image: string;
  prefetch: Prefetch;
  /** `status.prefetchNodes` as it is now. */
  previous: readonly string[];
}

/** How many nodes a prefetch asks for: its count, or (a selector alone) every node it selects, up to the limit. */
export const prefetchTarget = (p: Prefetch): number => p.count ?? LIMITS.maxPrefetchNodes;

/**
 * The nodes each image with a prefetch is warmed on. Per image, among the candidates its
 * selector selects (all candidates without one), `prefetchTarget` nodes: those chosen before
 * that are still eligible (stable across controller restarts and leader changes: the choice
 * lives in the status), then nodes that already hold it ready (warming them costs nothing),
 * then the nodes with the fewest prefetch assignments so far (spread), ties broken by a hash of
 * image and node. Fewer eligible nodes than that: all of them. Images are taken in name order,
 * so the result is deterministic.
 */
export function choosePrefetchNodes(requests: readonly PrefetchRequest[], candidates: readonly Candidate[], holders: ReadonlyMap<string, readonly string[]>): Map<string, string[]> {
  const load = new Map<string, number>();
  const sorted = [...requests].sort((a, b) => a.image.localeCompare(b.image));
  const eligibleOf = new Map<string, Candidate[]>();
  const chosen = new Map<string, Set<string>>();
  // First every image keeps what is still valid, so that spreading sees the whole cluster's load.
  for (const r of sorted) {
    const sel = r.prefetch.nodeSelector;
    const eligible = sel ? candidates.filter((c) => matchesSelector(sel, c.labels)) : [...candidates];
    eligibleOf.set(r.image, eligible);
    const names = new Set(eligible.map((c) => c.name));
    const keep = new Set<string>();
    for (const n of r.previous) if (keep.size < prefetchTarget(r.prefetch) && names.has(n)) keep.add(n);
    for (const n of keep) load.set(n, (load.get(n) ?? 0) + 1);
    chosen.set(r.image, keep);
  }
  for (const r of sorted) {
    const count = prefetchTarget(r.prefetch);
    const set = chosen.get(r.image) as Set<string>;
    const held = new Set(holders.get(r.image) ?? []);
    const rest = (eligibleOf.get(r.image) ?? [])
      .filter((c) => !set.has(c.name))
      .map((c) => ({ name: c.name, held: held.has(c.name) ? 0 : 1, hash: spreadHash(`${r.image}/${c.name}`) }));
    rest.sort((a, b) => a.held - b.held || (load.get(a.name) ?? 0) - (load.get(b.name) ?? 0) || a.hash - b.hash || a.name.localeCompare(b.name));
    for (const c of rest) {
      if (set.size >= count) break;
      set.add(c.name);
      load.set(c.name, (load.get(c.name) ?? 0) + 1);
    }
  }
  return new Map([...chosen].map(([k, v]) => [k, [...v].sort()]));
}

/** What the controller writes to `CachedImage.status` (merge patch: null removes prefetchNodes). */
export interface ImageStatusPatch {
  readyNodes: number;
  readyNodeNames: string[];
  prefetchNodes: string[] | null;
}

const sameList = (a: readonly string[] | undefined, b: readonly string[] | null): boolean => (a === undefined || a.length === 0 ? b === null || b.length === 0 : b !== null && a.join('\n') === b.join('\n'));

/**
 * The status patches that bring every CachedImage up to date, by image name; images already
 * up to date are left out. Invalid CachedImages get readyNodes and names but no prefetch.
 */
export function imageStatusUpdates(cachedImages: readonly unknown[], caches: readonly unknown[], nodes: readonly unknown[]): Array<{ name: string; status: ImageStatusPatch }> {
  const { holders, agentNodes } = nodeCacheIndex(caches);
  const images: Array<{ name: string; raw: unknown; prefetch?: Prefetch }> = [];
  for (const raw of cachedImages) {
    const name = (raw as { metadata?: { name?: unknown } } | null)?.metadata?.name;
    if (typeof name !== 'string') continue;
    const res = CachedImageSchema.safeParse(raw);
    const prefetch = res.success ? res.data.spec.prefetch : undefined;
    images.push({ name, raw, ...(prefetch ? { prefetch } : {}) });
  }
  const candidates = prefetchCandidates(nodes, agentNodes);
  const requests = images.flatMap((i) => (i.prefetch ? [{ image: i.name, prefetch: i.prefetch, previous: cachedImageStatusOf(i.raw).prefetchNodes ?? [] }] : []));
  const prefetch = choosePrefetchNodes(requests, candidates, holders);
  const out: Array<{ name: string; status: ImageStatusPatch }> = [];
  for (const i of images) {
    const current = cachedImageStatusOf(i.raw);
    const ready = holders.get(i.name) ?? [];
    const want: ImageStatusPatch = {
      readyNodes: ready.length,
      readyNodeNames: chooseReadyNodeNames(ready, current.readyNodeNames ?? []),
      prefetchNodes: prefetch.get(i.name) ?? null,
    };
    const rawStatus = (i.raw as { status?: { readyNodes?: unknown } | null }).status;
    if (rawStatus?.readyNodes === want.readyNodes && sameList(current.readyNodeNames, want.readyNodeNames) && sameList(current.prefetchNodes, want.prefetchNodes)) continue;
    out.push({ name: i.name, status: want });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}
