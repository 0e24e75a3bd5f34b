import { isUtf8 } from 'node:buffer';
import { ConvertError } from './errors.js';

/**
 * Bytes to text, refusing anything that is not UTF-8. `Buffer.toString('utf8')` silently puts
 * U+FFFD where bytes are invalid, so a domain (or VMI) with stray bytes would be rewritten
 * into something other than what libvirt was given. Pure.
 */
export function decodeUtf8Strict(bytes: Uint8Array, what: string): string {
  if (isUtf8(bytes)) return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
  const at = firstInvalidUtf8(bytes);
  const b = bytes[at] ?? 0;
  throw new ConvertError([`${what}: not valid UTF-8: byte 0x${b.toString(16).padStart(2, '0')} at offset ${at}`]);
}

/** Offset of the first byte that does not start or continue a well-formed UTF-8 sequence. */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i] as number;
    let n: number;
    let min: number;
    if (b < 0x80) {
      i++;
      continue;
    } else if (b >= 0xc2 && b <= 0xdf) [n, min] = [1, 0x80];
    else if (b >= 0xe0 && b <= 0xef) [n, min] = [2, 0x800];
    else if (b >= 0xf0 && b <= 0xf4) [n, min] = [3, 0x10000];
    else return i;
    let cp = b & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const c = bytes[i + k];
      if (c === undefined || (c & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (c & 0x3f);
    }
    // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8.
    if (cp < min || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return i;
    i += n + 1;
  }
  return bytes.length;
}
