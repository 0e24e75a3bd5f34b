/**
 * Streaming splitter for SPDK's JSON-RPC socket. SPDK writes each reply as one JSON object
 * followed by `\n`, but a read may hold half an object or several of them, so objects are
 * found by tracking nesting depth and string/escape state, never by looking for newlines.
 *
 * Scanning works on bytes: every structural character is ASCII and every byte of a UTF-8
 * multi-byte sequence is >= 0x80, so a chunk boundary inside a character is harmless.
 */

export class FramingError extends Error {
  override readonly name = 'FramingError';
  constructor(
    message: string,
    /** The first bytes of the offending input, for logs. */
    readonly excerpt: string,
  ) {
    super(message);
  }
}

export interface ScanResult {
  /** Complete JSON values, in arrival order. */
  values: unknown[];
  /** Set when the stream is not JSON; the scanner must be reset (or dropped) afterwards. */
  error?: FramingError;
}

const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;

function isWhitespace(b: number): boolean {
  return b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
}

function excerptOf(bytes: Buffer): string {
  return bytes.subarray(0, 80).toString('utf8');
}

/** 64 MiB: far above any real reply (bdev_get_bdevs of thousands of bdevs), bounds garbage. */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

export class JsonStreamScanner {
  private depth = 0;
  private inString = false;
  private escaped = false;
  /** Pieces of the value being assembled (only the part after its first byte). */
  private pieces: Buffer[] = [];
  private pendingBytes = 0;
  private broken?: FramingError;

  constructor(private readonly maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES) {}

  /** Bytes held for a value that is not complete yet. */
  get buffered(): number {
    return this.pendingBytes;
  }

  reset(): void {
    this.depth = 0;
    this.inString = false;
    this.escaped = false;
    this.pieces = [];
    this.pendingBytes = 0;
    this.broken = undefined;
  }

  push(chunk: Buffer): ScanResult {
    const values: unknown[] = [];
    if (this.broken) return { values, error: this.broken };
    let start = this.depth > 0 ? 0 : -1; // start of the current value inside this chunk
    let slashAt = -1; // the next backslash after the scan position (chunk.length: none)
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i] as number;
      if (this.depth === 0) {
        if (isWhitespace(b)) continue;
        if (b !== OPEN_BRACE && b !== OPEN_BRACKET) {
          return this.fail(values, `expected '{' at the start of a reply, got ${JSON.stringify(String.fromCharCode(b))}`, chunk.subarray(i));
        }
        start = i;
        this.depth = 1;
        continue;
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (b === BACKSLASH) this.escaped = true;
        else if (b === QUOTE) this.inString = false;
        else {
          // Most of a reply is string content: jump to the next quote (native search) unless
          // a backslash comes first, which the byte-wise steps above must see.
          // Both searches only move forward, so a chunk is still scanned in linear time.
          if (slashAt <= i) {
            const found = chunk.indexOf(BACKSLASH, i + 1);
            slashAt = found < 0 ? chunk.length : found;
          }
          const quote = chunk.indexOf(QUOTE, i + 1);
          const next = quote < 0 ? chunk.length : quote;
          i = Math.min(next, slashAt) - 1;
        }
        continue;
      }
      if (b === QUOTE) this.inString = true;
      else if (b === OPEN_BRACE || b === OPEN_BRACKET) this.depth++;
      else if (b === CLOSE_BRACE || b === CLOSE_BRACKET) {
        this.depth--;
        if (this.depth === 0) {
          const last = chunk.subarray(start, i + 1);
          const whole = this.pieces.length === 0 ? last : Buffer.concat([...this.pieces, last]);
          this.pieces = [];
          this.pendingBytes = 0;
          start = -1;
          try {
            values.push(JSON.parse(whole.toString('utf8')));
          } catch (e) {
            return this.fail(values, `reply is not valid JSON: ${(e as Error).message}`, whole);
          }
        }
      }
    }
    if (this.depth > 0 && start >= 0) {
      const rest = chunk.subarray(start);
      this.pieces.push(rest);
      this.pendingBytes += rest.length;
      if (this.pendingBytes > this.maxMessageBytes) {
        return this.fail(values, `reply exceeds ${this.maxMessageBytes} bytes without ending`, Buffer.concat(this.pieces));
      }
    }
    return { values };
  }

  private fail(values: unknown[], message: string, bytes: Buffer): ScanResult {
    this.broken = new FramingError(message, excerptOf(bytes));
    this.pieces = [];
    this.pendingBytes = 0;
    return { values, error: this.broken };
  }
}
