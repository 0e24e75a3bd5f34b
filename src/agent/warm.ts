import { CachedImageSchema, cachedImageStatusOf } from '../api/cachedimage.js';
import type { ImageSpec, ObservedImage } from '../backend/types.js';

/**
 * Prefetch on the node, pure: which images this node warms before any VM needs them, and what
 * warming them takes. Warm images are held like images a disk uses (never evicted).
 */

/**
 * The CachedImages (raw, from the informer) this node warms, by name: those with a
 * `spec.prefetch` whose `status.prefetchNodes` names this node. The one cluster-wide
 * controller resolves selectors and counts into that list (src/controller/image-status.ts),
 * so the agent needs no access to Node objects. An invalid CachedImage, or one whose prefetch
 * was removed (the status may lag), is not warmed.
 */
export function imagesToWarm(node: string, cachedImages: readonly unknown[]): string[] {
  const out = new Set<string>();
  for (const raw of cachedImages) {
    const res = CachedImageSchema.safeParse(raw);
    if (!res.success || !res.data.spec.prefetch) continue;
    if ((cachedImageStatusOf(raw).prefetchNodes ?? []).includes(node)) out.add(res.data.metadata.name);
  }
  return [...out].sort();
}

/**
 * The warm images to import now: in the catalog, not held yet (absent, or a failed or
 * interrupted import), and not already imported for a disk in this plan (`requested`).
 */
export function warmImports(warm: readonly string[], catalog: readonly ImageSpec[], observed: ReadonlyMap<string, Pick<ObservedImage, 'phase'>>, requested: ReadonlySet<string>): ImageSpec[] {
  const out: ImageSpec[] = [];
  for (const name of warm) {
    const spec = catalog.find((i) => i.name === name);
    if (!spec || requested.has(name)) continue;
    const img = observed.get(name);
    if (!img || img.phase === 'failed' || img.phase === 'importing') out.push(spec);
  }
  return out;
}
