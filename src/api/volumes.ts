import { z } from 'zod';
import { DNS1123_LABEL, MAX_QUEUES, SLOT_RE } from '../contract/index.js';
import { LIMITS } from './limits.js';
import { formatBytes, parseDuration, parseQuantity } from './quantity.js';
import { ValidationError, apiErrorMap, formatZodError } from './errors.js';
import { readUserYaml } from './yaml.js';

/** The VMI annotation that declares SPDK disks, shaped like KubeVirt volumes. */
export const VOLUMES_ANNOTATION = 'kubevirt-spdk.io/volumes';
/** Standalone mode: the slot a VMI holds (the device plugin decides it in a cluster). */
export const SLOT_ANNOTATION = 'kubevirt-spdk.io/slot';
/** The agent's per-disk status, written on the VMI. */
export const STATUS_ANNOTATION = 'kubevirt-spdk.io/status';
/** The extended resource a VMI's launcher pod requests: one vhost slot (device plugin). */
export const VHOST_SLOT_RESOURCE = 'kubevirt-spdk.io/vhost-slot';

// The layout's rules, re-exported for the schemas' users.
export { DNS1123_LABEL, SLOT_RE, MAX_QUEUES };
/**
 * libvirt's `<reconnect timeout='N'/>` (QEMU `reconnect=N`) is the interval between QEMU's
 * attempts to reach the socket again, not a deadline: QEMU retries forever, and the guest waits
 * up to N seconds after the backend is back. Small is right.
 */
export const DEFAULT_RECONNECT_INTERVAL_S = 1;

/**
 * What a `bdev:` volume may name: an SPDK bdev name, or an lvol alias `<lvstore>/<lvol>`.
 * Never a path: no leading `/`, no component starting with `.` (so no `..`), one `/` at most.
 * Each backend resolves the name in its own namespace (SPDK's bdevs; qsd: a file in the
 * directory the node's admin configured) and checks it again there.
 */
export const BDEV_NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.:-]*(\/[A-Za-z0-9_][A-Za-z0-9_.:-]*)?$/;
export const BDEV_NAME_MAX = 255;
/** The `bdev:` rule as one message, for the schema and the backends' re-checks. */
export function bdevNameProblem(name: string): string | undefined {
  if (name.length === 0 || name.length > BDEV_NAME_MAX) return `must be 1 to ${BDEV_NAME_MAX} characters`;
  if (!BDEV_NAME_RE.test(name)) {
    return 'must be a bdev name ([A-Za-z0-9_.:-], optionally "<lvstore>/<lvol>"), never a path: no leading "/", no "." or ".." component';
  }
  return undefined;
}

export const DiskName = z
  .string()
  .max(63, 'must be at most 63 characters (DNS-1123 label)')
  .regex(DNS1123_LABEL, 'must be a DNS-1123 label (lower-case letters, digits and "-", starting and ending alphanumeric)');

const Quantity = z.unknown().transform((v, ctx) => {
  if (typeof v !== 'string' && typeof v !== 'number') {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `must be a Kubernetes quantity such as 20Gi, not ${Array.isArray(v) ? 'a list' : v === null ? 'null' : typeof v}` });
    return z.NEVER;
  }
  const text = String(v);
  const bytes = parseQuantity(text);
  if (bytes === undefined) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${text} is not a Kubernetes quantity (e.g. 20Gi)` });
    return z.NEVER;
  }
  if (bytes <= 0) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${text} must be greater than 0` });
    return z.NEVER;
  }
  if (bytes > LIMITS.maxDiskBytes) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${text} is larger than the limit of ${formatBytes(LIMITS.maxDiskBytes)}` });
    return z.NEVER;
  }
  return { text, bytes };
});

const ReconnectTimeout = z.unknown().transform((text, ctx) => {
  if (typeof text !== 'string') {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: 'must be a duration with a unit such as 10s' });
    return z.NEVER;
  }
  const ms = parseDuration(text);
  if (ms === undefined) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${text} is not a duration (e.g. 10s)` });
    return z.NEVER;
  }
  if (ms <= 0) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${text} must be greater than 0` });
    return z.NEVER;
  }
  if (ms / 1000 > LIMITS.maxReconnectTimeoutSeconds) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${text} is longer than the limit of ${LIMITS.maxReconnectTimeoutSeconds}s` });
    return z.NEVER;
  }
  if (ms % 1000 !== 0) {
    // libvirt's <reconnect timeout> is a whole number of seconds.
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `${text} must be a whole number of seconds (libvirt reconnect timeout)` });
    return z.NEVER;
  }
  return ms / 1000;
});

export const SpdkVhostBlkDiskSchema = z
  .object({
    image: z.string().max(63).regex(DNS1123_LABEL, 'must name a CachedImage (DNS-1123 label)').optional(),
    blank: z.object({}).strict().optional(),
    bdev: z
      .string()
      .superRefine((v, ctx) => {
        const problem = bdevNameProblem(v);
        if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, message: problem });
      })
      .optional(),
    capacity: Quantity.optional(),
    bootOrder: z.number().int('must be an integer').min(1, 'must be >= 1').optional(),
    queues: z.number().int('must be an integer').min(1, 'must be >= 1').max(MAX_QUEUES, `must be <= ${MAX_QUEUES}`).optional(),
    reconnectInterval: ReconnectTimeout.optional(),
    /** Deprecated name of reconnectInterval (it never was a timeout); still read, the webhook warns. */
    reconnectTimeout: ReconnectTimeout.optional(),
    readonly: z.boolean().default(false),
  })
  .strict()
  .superRefine((d, ctx) => {
    if (d.reconnectInterval !== undefined && d.reconnectTimeout !== undefined) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['reconnectTimeout'], message: 'is the deprecated name of reconnectInterval: give only reconnectInterval' });
    }
    const sources = (['image', 'blank', 'bdev'] as const).filter((k) => d[k] !== undefined);
    if (sources.length !== 1) {
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        message: `exactly one of image, blank, bdev is required (found ${sources.length ? sources.join(', ') : 'none'})`,
      });
    }
    if ((d.image !== undefined || d.blank !== undefined) && d.capacity === undefined) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['capacity'], message: 'is required for image and blank disks' });
    }
  })
  .transform((d) => ({ ...d, reconnectInterval: d.reconnectInterval ?? d.reconnectTimeout ?? DEFAULT_RECONNECT_INTERVAL_S }));

export const SpdkVolumeSchema = z.object({ name: DiskName, spdkVhostBlkDisk: SpdkVhostBlkDiskSchema }).strict();

export const SpdkVolumesSchema = z
  .array(SpdkVolumeSchema)
  .min(1, 'must declare at least one volume')
  .max(26, 'must declare at most 26 volumes')
  .superRefine((vols, ctx) => {
    const seen = new Map<string, number>();
    vols.forEach((v, i) => {
      const first = seen.get(v.name);
      if (first !== undefined) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: [i, 'name'], message: `"${v.name}" is already used by volumes[${first}]` });
      } else seen.set(v.name, i);
    });
    const boots = new Map<number, number>();
    vols.forEach((v, i) => {
      const b = v.spdkVhostBlkDisk.bootOrder;
      if (b === undefined) return;
      const first = boots.get(b);
      if (first !== undefined) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: [i, 'spdkVhostBlkDisk', 'bootOrder'], message: `${b} is already used by volumes[${first}]` });
      } else boots.set(b, i);
    });
  });

export type SpdkVolumeInput = z.input<typeof SpdkVolumeSchema>;
export type SpdkVolume = z.output<typeof SpdkVolumeSchema>;
export type SpdkVhostBlkDisk = z.output<typeof SpdkVhostBlkDiskSchema>;

/** Where a disk's data comes from, normalised. */
export type DiskSource = { kind: 'image'; image: string } | { kind: 'blank' } | { kind: 'bdev'; bdev: string };

export function diskSource(d: SpdkVhostBlkDisk): DiskSource {
  if (d.image !== undefined) return { kind: 'image', image: d.image };
  if (d.bdev !== undefined) return { kind: 'bdev', bdev: d.bdev };
  return { kind: 'blank' };
}

/**
 * YAML parsing dominates the cost of a conversion, and the same annotation is read again and
 * again (OnDefineDomain twice per boot, the agent on every reconcile). Only successes are kept;
 * callers get copies so that none can change another's result.
 */
const parsedVolumes = new Map<string, SpdkVolume[]>();
const PARSED_VOLUMES_MAX = 256;

/**
 * Parses the annotation text (YAML or JSON). Throws ValidationError whose messages name the
 * field (`volumes[0].spdkVhostBlkDisk.capacity`) and the rule.
 */
export function parseVolumesAnnotation(text: string, prefix = 'volumes'): SpdkVolume[] {
  const key = `${prefix}\n${text}`;
  const hit = parsedVolumes.get(key);
  if (hit) return structuredClone(hit);
  const vols = parseVolumesUncached(text, prefix);
  if (parsedVolumes.size >= PARSED_VOLUMES_MAX) parsedVolumes.delete(parsedVolumes.keys().next().value ?? '');
  parsedVolumes.set(key, vols);
  return structuredClone(vols);
}

function parseVolumesUncached(text: string, prefix: string): SpdkVolume[] {
  const doc = readUserYaml(text, prefix);
  const res = SpdkVolumesSchema.safeParse(doc, { errorMap: apiErrorMap });
  if (!res.success) throw new ValidationError(formatZodError(prefix, res.error));
  return res.data;
}
