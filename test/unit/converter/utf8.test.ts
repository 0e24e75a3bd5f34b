import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { describe, expect, it } from 'vitest';
import { ConvertError } from '../../../src/converter/errors.js';
import { decodeUtf8Strict, firstInvalidUtf8 } from '../../../src/converter/utf8.js';
import { onDefineDomain } from '../../../src/sidecar/server.js';
import { silentLogger } from '../../../src/log.js';

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../fixtures/converter');
const DOMAIN = readFileSync(path.join(FIXTURES, 'kubevirt-q35.xml'));
const VMI = Buffer.from(JSON.stringify(parseYaml(readFileSync(path.join(FIXTURES, 'vmi-fedora.yaml'), 'utf8'))));

function problems(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConvertError) return e.problems;
    throw e;
  }
  return [];
}

describe('F15: non-UTF-8 input is refused, naming the byte offset', () => {
  it.each([
    ['a lone continuation byte', Buffer.from([0x61, 0x80, 0x62]), 1],
    ['a truncated sequence at the end', Buffer.from([0x61, 0x62, 0xe2, 0x82]), 2],
    ['an overlong "/"', Buffer.from([0x3c, 0xc0, 0xaf]), 1],
    ['a surrogate', Buffer.from([0x61, 0xed, 0xa0, 0x80]), 1],
    ['a code point past U+10FFFF', Buffer.from([0xf4, 0x90, 0x80, 0x80]), 0],
    ['Latin-1 text', Buffer.from('caf\xe9', 'latin1'), 3],
  ])('%s', (_what, bytes, offset) => {
    expect(firstInvalidUtf8(bytes)).toBe(offset);
    expect(problems(() => decodeUtf8Strict(bytes, 'domain XML'))).toEqual([
      `domain XML: not valid UTF-8: byte 0x${(bytes[offset] ?? 0).toString(16).padStart(2, '0')} at offset ${offset}`,
    ]);
  });

  it('valid UTF-8 (multi-byte too) decodes unchanged', () => {
    const text = 'é € 𝄞 <domain/>';
    expect(decodeUtf8Strict(Buffer.from(text, 'utf8'), 'x')).toBe(text);
    expect(firstInvalidUtf8(Buffer.from(text, 'utf8'))).toBe(Buffer.byteLength(text));
  });

  it('OnDefineDomain refuses a domain with a stray byte instead of replacing it with U+FFFD', () => {
    const at = DOMAIN.indexOf('<name>') + 6;
    const bad = Buffer.concat([DOMAIN.subarray(0, at), Buffer.from([0xff]), DOMAIN.subarray(at)]);
    expect(problems(() => onDefineDomain({ domainXML: bad, vmi: VMI }, undefined, silentLogger))).toEqual([`domain XML: not valid UTF-8: byte 0xff at offset ${at}`]);
    const badVmi = Buffer.concat([VMI.subarray(0, 10), Buffer.from([0xc3]), VMI.subarray(10)]);
    expect(problems(() => onDefineDomain({ domainXML: DOMAIN, vmi: badVmi }, undefined, silentLogger))).toEqual(['vmi: not valid UTF-8: byte 0xc3 at offset 10']);
  });
});
