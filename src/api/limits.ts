/**
 * Every bound on tenant-controlled numbers, in one table: the schemas refuse values beyond
 * them (naming the field), the agent and the backends rely on them (a size fits a safe
 * integer, a duration fits a timer).
 */

const TiB = 2 ** 40;
const MiB = 2 ** 20;

export const LIMITS = {
  /** A disk's `capacity` and a CachedImage's `size`: 64Ti (a safe integer, any real lvstore). */
  maxDiskBytes: 64 * TiB,
  /** `reconnectInterval` (and its old name): libvirt takes whole seconds; an hour is far past any useful retry. */
  maxReconnectTimeoutSeconds: 3600,
  /**
   * Bytes an image source may have beyond its declared `size` (a qcow2 file carries metadata
   * beside its data): 1% + 16Mi. A transfer past that stops.
   */
  imageSlack: (declaredBytes: number): number => Math.ceil(declaredBytes / 100) + 16 * MiB,
  /** Any duration flag: Node timers hold at most 2^31-1 ms (~24.8 days); more would fire at once. */
  maxDurationMs: 2 ** 31 - 1,
  /** An image with no declared size: the transfer stops at this many bytes. */
  maxUndeclaredImageBytes: 1 * TiB,
  /** `CachedImage.spec.prefetch`: the most nodes one image is warmed on (its `count`, a selector alone, the length of `status.prefetchNodes`). */
  maxPrefetchNodes: 256,
  /**
   * `CachedImage.status.readyNodeNames`: the nodes named for cache-aware placement. A few dozen
   * is plenty for the scheduler to find one nearby, and keeps the object and every VMI's
   * affinity small however many nodes hold the image (`status.readyNodes` counts them all).
   */
  maxReadyNodeNames: 32,
  /** A label selector's matchLabels entries and matchExpressions each. */
  maxSelectorTerms: 32,
  /** Values of one matchExpressions requirement. */
  maxSelectorValues: 64,
} as const;

/** sun_path holds 108 bytes with the terminating NUL: the longest path a unix socket can bind. */
export const MAX_SOCKET_PATH_BYTES = 107;

export function socketPathTooLong(socketPath: string): boolean {
  return Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES;
}

/** The most bytes an import may read from an image's source. */
export function maxSourceBytes(declaredBytes: number | undefined): number {
  if (declaredBytes === undefined) return LIMITS.maxUndeclaredImageBytes;
  return declaredBytes + LIMITS.imageSlack(declaredBytes);
}
