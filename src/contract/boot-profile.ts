import { z } from 'zod';

/**
 * A boot profile: the byte ranges of an image that its first boot read, recorded on one node
 * and hydrated first on every other node (the thesis's boot cache). Shared by the backend
 * (records and replays it), the agent (reads it from peers' NodeImageCaches) and the
 * NodeImageCache status (publishes it): defined once here, with its bounds.
 *
 * A profile comes from another node, so it is hostile input: few ranges, sorted, disjoint,
 * aligned, inside the image, a bounded total. Replaying it can only make the node read the
 * image's own bytes earlier than the stream would; nothing in it names a file or a node.
 */

export const BOOT_PROFILE_LIMITS = {
  /** At most this many ranges (a NodeImageCache entry stays small). */
  maxRanges: 1024,
  /** At most this many bytes in all: a boot reads a few percent of an image, not all of it. */
  maxBytes: 1024 * 1024 * 1024,
  /** Offsets and lengths are multiples of this (the qcow2 cluster a copy-on-read allocates). */
  alignBytes: 64 * 1024,
} as const;

export const BootRangeSchema = z
  .object({
    offset: z.number().int().nonnegative().multipleOf(BOOT_PROFILE_LIMITS.alignBytes, `must be a multiple of ${BOOT_PROFILE_LIMITS.alignBytes}`),
    length: z.number().int().positive().multipleOf(BOOT_PROFILE_LIMITS.alignBytes, `must be a multiple of ${BOOT_PROFILE_LIMITS.alignBytes}`),
  })
  .strict();
export type BootRange = z.output<typeof BootRangeSchema>;

export const BootProfileSchema = z
  .object({
    /** The image's virtual size the profile was recorded on: every range lies inside it. */
    sizeBytes: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
    /** Sorted by offset, disjoint and not touching (coalesced). */
    ranges: z.array(BootRangeSchema).min(1).max(BOOT_PROFILE_LIMITS.maxRanges),
  })
  .strict()
  .superRefine((p, ctx) => {
    let end = -1;
    let total = 0;
    p.ranges.forEach((r, i) => {
      if (r.offset <= end) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['ranges', i, 'offset'], message: `${r.offset} overlaps or touches the previous range (ranges must be sorted and coalesced)` });
      }
      if (r.offset + r.length > p.sizeBytes) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['ranges', i, 'length'], message: `range ${r.offset}+${r.length} ends beyond the image size ${p.sizeBytes}` });
      }
      end = r.offset + r.length;
      total += r.length;
    });
    if (total > BOOT_PROFILE_LIMITS.maxBytes) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['ranges'], message: `${total} bytes in all is more than the limit of ${BOOT_PROFILE_LIMITS.maxBytes}` });
    }
  });
export type BootProfile = z.output<typeof BootProfileSchema>;

/** `where.path.to[3].field: message; ...`: a refusal that names the field and the rule. */
export function bootProfileProblem(raw: unknown, where = 'bootProfile'): string | undefined {
  const res = BootProfileSchema.safeParse(raw);
  if (res.success) return undefined;
  return res.error.issues
    .slice(0, 5)
    .map((i) => `${[where, ...i.path].map((p, k) => (typeof p === 'number' ? `[${p}]` : k === 0 ? String(p) : `.${String(p)}`)).join('')}: ${i.message}`)
    .join('; ');
}

/** Half-open intervals [start, end). */
type Span = [number, number];

const toSpans = (ranges: readonly BootRange[]): Span[] => ranges.map((r) => [r.offset, r.offset + r.length]);
const toRanges = (spans: readonly Span[]): BootRange[] => spans.map(([s, e]) => ({ offset: s, length: e - s }));

function merged(spans: Span[], gap: number): Span[] {
  const sorted = [...spans].filter(([s, e]) => e > s).sort((a, b) => a[0] - b[0]);
  const out: Span[] = [];
  for (const [s, e] of sorted) {
    const last = out[out.length - 1];
    if (last && s <= last[1] + gap) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}

/**
 * Ranges read at boot -> a valid profile (pure): aligned outward to whole clusters, clipped to
 * the image, merged; over `maxRanges` the closest neighbours are merged (the gap between them is
 * read too, a little more than needed, never less); over `maxBytes` the profile keeps its first
 * ranges (the start of the disk, where bootloaders and kernels live). Undefined when nothing is left.
 */
export function coalesceBootRanges(
  ranges: readonly BootRange[],
  sizeBytes: number,
  limits: { maxRanges?: number; maxBytes?: number } = {},
): BootProfile | undefined {
  const align = BOOT_PROFILE_LIMITS.alignBytes;
  const maxRanges = Math.min(limits.maxRanges ?? BOOT_PROFILE_LIMITS.maxRanges, BOOT_PROFILE_LIMITS.maxRanges);
  const maxBytes = Math.min(limits.maxBytes ?? BOOT_PROFILE_LIMITS.maxBytes, BOOT_PROFILE_LIMITS.maxBytes);
  // The last cluster of an image whose size is no multiple of the cluster cannot be named whole.
  const limit = Math.floor(sizeBytes / align) * align;
  let spans = merged(
    toSpans(ranges).map(([s, e]): Span => [Math.floor(s / align) * align, Math.min(Math.ceil(e / align) * align, limit)]),
    0,
  );
  if (spans.length > maxRanges) {
    // Merge across the smallest gaps until the count fits: the gap found at the cut point.
    const gaps = spans
      .slice(1)
      .map((sp, i) => sp[0] - (spans[i]?.[1] ?? 0))
      .sort((a, b) => a - b);
    const cut = gaps[spans.length - maxRanges - 1] ?? 0;
    spans = merged(spans, cut);
    // Equal gaps can leave a few too many: merge pairwise from the start until it fits.
    while (spans.length > maxRanges) {
      const out: Span[] = [];
      for (let i = 0; i < spans.length; i += 2) {
        const a = spans[i] as Span;
        const b = spans[i + 1];
        out.push(b ? [a[0], b[1]] : a);
      }
      spans = out;
    }
  }
  let total = 0;
  const kept: Span[] = [];
  for (const [s, e] of spans) {
    if (total >= maxBytes) break;
    const take = Math.min(e - s, maxBytes - total);
    kept.push([s, s + take]);
    total += take;
  }
  if (kept.length === 0) return undefined;
  return { sizeBytes, ranges: toRanges(kept) };
}

/** `a` minus `b` (pure): the parts of `a` not covered by `b`. */
export function subtractRanges(a: readonly BootRange[], b: readonly BootRange[]): BootRange[] {
  const minus = merged(toSpans(b), 0);
  const out: Span[] = [];
  for (const [s0, e] of merged(toSpans(a), 0)) {
    let s = s0;
    for (const [bs, be] of minus) {
      if (be <= s || bs >= e) continue;
      if (bs > s) out.push([s, bs]);
      s = Math.max(s, be);
      if (s >= e) break;
    }
    if (s < e) out.push([s, e]);
  }
  return toRanges(out);
}

/** Total bytes of some ranges. */
export const rangesBytes = (ranges: readonly BootRange[]): number => ranges.reduce((n, r) => n + r.length, 0);
