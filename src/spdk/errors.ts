/**
 * Typed SPDK errors. SPDK reports one condition in several ways (-17 "File exists" from
 * bdev_malloc_create, -32602 "File exists" from vhost_create_blk_controller), so the kind is
 * classified from the code *and* the message: see test/fixtures/spdk/README.md.
 */
export const SPDK_ERROR_KINDS = [
  'exists',
  'notFound',
  'busy',
  'notPermitted',
  'invalidParams',
  'noSpace',
  'timeout',
  'methodNotFound',
  'internal',
  'transport',
] as const;
export type SpdkErrorKind = (typeof SPDK_ERROR_KINDS)[number];

export class SpdkError extends Error {
  override readonly name = 'SpdkError';
  constructor(
    readonly method: string,
    readonly code: number,
    message: string,
    readonly kind: SpdkErrorKind,
    readonly context: Record<string, unknown> = {},
  ) {
    super(`${method}: ${message} (code ${code}, ${kind})`);
    this.rpcMessage = message;
  }
  /** The message exactly as SPDK sent it. */
  readonly rpcMessage: string;

  /** busy (EBUSY/EAGAIN) and transport (connection lost) may succeed when tried again. */
  get transient(): boolean {
    return this.kind === 'busy' || this.kind === 'transport';
  }
}

// errno values as SPDK sends them (negated).
const ERRNO: Record<number, SpdkErrorKind> = {
  [-1]: 'notPermitted', // EPERM
  [-2]: 'notFound', // ENOENT
  [-16]: 'busy', // EBUSY
  [-11]: 'busy', // EAGAIN
  [-17]: 'exists', // EEXIST
  [-19]: 'notFound', // ENODEV
  [-22]: 'invalidParams', // EINVAL
  [-28]: 'noSpace', // ENOSPC
  [-110]: 'timeout', // ETIMEDOUT
  [-12]: 'noSpace', // ENOMEM
};

// strerror texts that SPDK puts in the message of -32602/-32603 errors.
const BY_MESSAGE: Array<[RegExp, SpdkErrorKind]> = [
  [/file exists/i, 'exists'],
  [/no such (device|file)/i, 'notFound'],
  [/device or resource busy|resource temporarily unavailable/i, 'busy'],
  [/operation not permitted/i, 'notPermitted'],
  [/no space left|cannot allocate memory/i, 'noSpace'],
  [/timed out/i, 'timeout'],
  [/invalid argument|spdk_json_decode_object failed|requires no parameters|invalid parameters/i, 'invalidParams'],
];

export function classifySpdkError(code: number, message: string): SpdkErrorKind {
  if (code === -32601) return 'methodNotFound';
  // Invalid request / parse error: what we sent was malformed, as with bad params.
  if (code === -32600 || code === -32700) return 'invalidParams';
  const byCode = ERRNO[code];
  if (byCode) return byCode;
  for (const [re, kind] of BY_MESSAGE) if (re.test(message)) return kind;
  if (code === -32602) return 'invalidParams';
  return 'internal';
}

export function isRetryable(err: unknown): boolean {
  return err instanceof SpdkError && err.transient;
}
