import { z } from 'zod';
import { parseAllDocuments } from 'yaml';
import { LIMITS } from './limits.js';
import { formatBytes, parseQuantity } from './quantity.js';
import { DNS1123_LABEL } from './volumes.js';
import { LabelSelectorSchema } from './labelselector.js';
import { ValidationError, apiErrorMap, formatZodError } from './errors.js';
import { FILE_YAML_LIMITS, STRICT_YAML_OPTIONS, checkYamlLimits, yamlProblems } from './yaml.js';

export const API_GROUP = 'kubevirt-spdk.io';
export const API_VERSION = 'v1alpha1';

const Sha256 = z.string().regex(/^[a-f0-9]{64}$/, 'must be 64 lower-case hex characters');

export const ImageSourceSchema = z.union([
  z.object({ http: z.object({ url: z.string().url().regex(/^https?:\/\//, 'must be an http or https URL'), sha256: Sha256 }).strict() }).strict(),
  // Development only: a file already on the node.
  z.object({ hostPath: z.object({ path: z.string().regex(/^\//, 'must be an absolute path'), sha256: Sha256.optional() }).strict() }).strict(),
]);

/**
 * Warm the image on nodes before any VM needs it. `nodeSelector` alone: every node it selects
 * (up to LIMITS.maxPrefetchNodes). `count`: that many nodes, among those the selector selects
 * when there is one. Either way the one cluster-wide controller chooses them and writes them to
 * `status.prefetchNodes`, which is all a node agent reads (agents have no access to Nodes).
 */
export const PrefetchSchema = z
  .object({
    nodeSelector: LabelSelectorSchema.optional().describe(
      `A label selector on Nodes (\`matchLabels\`, \`matchExpressions\`, as in Kubernetes). Alone: every node it selects warms the image (at most ${LIMITS.maxPrefetchNodes}). With \`count\`: the nodes are chosen among those it selects.`,
    ),
    count: z
      .number()
      .int('must be an integer')
      .min(1, 'must be at least 1')
      .max(LIMITS.maxPrefetchNodes, `must be at most ${LIMITS.maxPrefetchNodes}`)
      .optional()
      .describe(
        'Warm the image on this many nodes. Fewer eligible nodes: all of them.',
      ),
  })
  .strict()
  .refine((p) => p.nodeSelector !== undefined || p.count !== undefined, 'must have nodeSelector, count or both')
  .describe(
    'Warm (import, hydrate) the image on nodes before any VM needs it; warm images are kept against cache eviction. At least one of `nodeSelector`, `count`. Only Ready, schedulable nodes that run the agent are eligible. The cluster-wide controller (`webhook --ready-nodes`) chooses the nodes, keeps its choice while it stays valid, prefers nodes that already hold the image, then spreads images over nodes, and lists them in `status.prefetchNodes`; each node agent warms what that list gives it.',
  );
export type Prefetch = z.output<typeof PrefetchSchema>;

export const CachedImageSpecSchema = z
  .object({
    source: ImageSourceSchema,
    prefetch: PrefetchSchema.optional(),
    format: z.enum(['raw', 'qcow2']).default('raw'),
    /** Virtual size; discovered on import when absent. */
    size: z
      .union([z.string(), z.number()])
      .transform((v, ctx) => {
        const bytes = parseQuantity(String(v));
        if (bytes === undefined || bytes <= 0) {
          ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${v} is not a positive Kubernetes quantity` });
          return z.NEVER;
        }
        if (bytes > LIMITS.maxDiskBytes) {
          ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${v} is larger than the limit of ${formatBytes(LIMITS.maxDiskBytes)}` });
          return z.NEVER;
        }
        return bytes;
      })
      .optional(),
  })
  .strict();

export const CachedImageSchema = z.object({
  apiVersion: z.literal(`${API_GROUP}/${API_VERSION}`),
  kind: z.literal('CachedImage'),
  metadata: z.object({ name: z.string().max(63).regex(DNS1123_LABEL, 'must be a DNS-1123 label') }).passthrough(),
  spec: CachedImageSpecSchema,
});

export type CachedImage = z.output<typeof CachedImageSchema>;

/** A Kubernetes node name (DNS-1123 subdomain). */
const NodeName = z.string().max(253).regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/, 'must be a node name (DNS-1123 subdomain)');

/**
 * `CachedImage.status`, written only by the cluster-wide controller (status subresource).
 * Readers parse it apart from the spec, so that a bad status never hides a valid image.
 */
export const CachedImageStatusSchema = z
  .object({
    /** Nodes whose NodeImageCache lists the image ready. */
    readyNodes: z.number().int().nonnegative().optional(),
    /** Some of those nodes (at most LIMITS.maxReadyNodeNames), for cache-aware placement. */
    readyNodeNames: z.array(NodeName).max(LIMITS.maxReadyNodeNames).optional(),
    /** The nodes chosen to warm the image for `spec.prefetch.count`. */
    prefetchNodes: z.array(NodeName).max(LIMITS.maxPrefetchNodes).optional(),
  })
  .passthrough();
export type CachedImageStatus = z.output<typeof CachedImageStatusSchema>;

/** The status of a CachedImage as read from the API, or an empty one when absent or malformed. */
export function cachedImageStatusOf(raw: unknown): CachedImageStatus {
  const res = CachedImageStatusSchema.safeParse((raw as { status?: unknown } | null)?.status ?? {});
  return res.success ? res.data : {};
}
export type CachedImageSpec = z.output<typeof CachedImageSpecSchema>;
export type ImageSource = z.output<typeof ImageSourceSchema>;

/** Parses a file of CachedImage documents (YAML stream or a List). */
export function parseCachedImages(text: string, file = 'images'): CachedImage[] {
  const out: CachedImage[] = [];
  const problems: string[] = [];
  checkYamlLimits(text, file, FILE_YAML_LIMITS);
  const docs = parseAllDocuments(text, STRICT_YAML_OPTIONS);
  // A stream with no document carries its own errors and warnings (e.g. a bad directive).
  if ('errors' in docs) {
    const issues = [...docs.errors, ...docs.warnings];
    if (issues.length) throw new ValidationError(issues.map((e) => `${file}: not valid YAML: ${e.message.split('\n')[0]}`));
  }
  docs.forEach((doc, i) => {
    const yamlIssues = yamlProblems(doc, `${file}[${i}]`);
    if (yamlIssues.length) {
      problems.push(...yamlIssues);
      return;
    }
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: 0 });
    } catch (e) {
      problems.push(`${file}[${i}]: not valid YAML: ${(e as Error).message.split('\n')[0]}`);
      return;
    }
    if (value === null || value === undefined) return;
    const items = (value as { kind?: string }).kind === 'List' ? ((value as { items?: unknown[] }).items ?? []) : [value];
    items.forEach((item, j) => {
      const res = CachedImageSchema.safeParse(item, { errorMap: apiErrorMap });
      if (res.success) out.push(res.data);
      else problems.push(...formatZodError(items.length > 1 || j > 0 ? `${file}[${i}].items[${j}]` : `${file}[${i}]`, res.error));
    });
  });
  if (problems.length) throw new ValidationError(problems);
  return out;
}
