/**
 * Errors as spdk_tgt v24.01 puts them on the wire. SPDK mixes raw negative errno codes
 * (returned synchronously by a handler) with JSON-RPC codes (-32602/-32603, usually from a
 * completion callback) carrying the same strerror text; the simulator keeps both.
 */
export const JSONRPC_PARSE_ERROR = -32700;
export const JSONRPC_INVALID_REQUEST = -32600;
export const JSONRPC_METHOD_NOT_FOUND = -32601;
export const JSONRPC_INVALID_PARAMS = -32602;
export const JSONRPC_INTERNAL_ERROR = -32603;

/** errno numbers (Linux) and their strerror text, for the conditions SPDK reports. */
export const ERRNO = {
  EPERM: [1, 'Operation not permitted'],
  ENOENT: [2, 'No such file or directory'],
  EIO: [5, 'Input/output error'],
  ENXIO: [6, 'No such device or address'],
  ENOMEM: [12, 'Cannot allocate memory'],
  EBUSY: [16, 'Device or resource busy'],
  EISDIR: [21, 'Is a directory'],
  EEXIST: [17, 'File exists'],
  ENODEV: [19, 'No such device'],
  EINVAL: [22, 'Invalid argument'],
  ENOSPC: [28, 'No space left on device'],
  ENAMETOOLONG: [36, 'File name too long'],
  ETIMEDOUT: [110, 'Connection timed out'],
  ECONNREFUSED: [111, 'Connection refused'],
} as const;
export type ErrnoName = keyof typeof ERRNO;

export class RpcError extends Error {
  override readonly name = 'RpcError';
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** What a synchronous SPDK handler sends: the negative errno as the code. */
export function rawErrno(name: ErrnoName): RpcError {
  const [n, text] = ERRNO[name];
  return new RpcError(-n, text);
}

/** What a completion callback sends: -32602 with the strerror text. */
export function invalidParams(name: ErrnoName): RpcError {
  return new RpcError(JSONRPC_INVALID_PARAMS, ERRNO[name][1]);
}

/** -32603 with the strerror text. */
export function internalError(name: ErrnoName): RpcError {
  return new RpcError(JSONRPC_INTERNAL_ERROR, ERRNO[name][1]);
}

/** The model's own failure, before it is mapped onto one of SPDK's reporting styles. */
export class ModelError extends Error {
  override readonly name = 'ModelError';
  constructor(
    readonly errno: ErrnoName,
    readonly detail: string,
  ) {
    super(`${ERRNO[errno][1]}: ${detail}`);
  }
}
