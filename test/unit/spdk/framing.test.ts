import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { JsonStreamScanner } from '../../../src/spdk/framing.js';

const scanAll = (chunks: Array<string | Buffer>): { values: unknown[]; error?: string } => {
  const s = new JsonStreamScanner();
  const values: unknown[] = [];
  for (const c of chunks) {
    const r = s.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
    values.push(...r.values);
    if (r.error) return { values, error: r.error.message };
  }
  return { values };
};

describe('JsonStreamScanner', () => {
  it('splits objects written back to back, with or without newlines', () => {
    expect(scanAll(['{"id":1}\n{"id":2}{"id":3}\n']).values).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }]);
  });

  it('joins an object split across chunks at every position', () => {
    const text = '{"jsonrpc":"2.0","id":7,"result":{"a":[1,{"b":"}"}],"c":"x\\"}y"}}\n';
    for (let i = 1; i < text.length; i++) {
      expect(scanAll([text.slice(0, i), text.slice(i)]).values, `split at ${i}`).toEqual([JSON.parse(text)]);
    }
  });

  it('is not fooled by braces, brackets and escaped quotes inside strings', () => {
    const obj = { s: '}{][', q: 'say "hi" \\ }', n: 'back\\' };
    const text = JSON.stringify(obj);
    expect(scanAll(text.split('')).values).toEqual([obj]);
  });

  it('keeps multi-byte UTF-8 intact when a chunk boundary falls inside a character', () => {
    const buf = Buffer.from('{"name":"disk-é-日本"}');
    for (let i = 1; i < buf.length; i++) {
      expect(scanAll([buf.subarray(0, i), buf.subarray(i)]).values).toEqual([{ name: 'disk-é-日本' }]);
    }
  });

  it('holds an incomplete object without emitting it', () => {
    const s = new JsonStreamScanner();
    expect(s.push(Buffer.from('{"id":1,"result":')).values).toEqual([]);
    expect(s.buffered).toBeGreaterThan(0);
    expect(s.push(Buffer.from('true}')).values).toEqual([{ id: 1, result: true }]);
    expect(s.buffered).toBe(0);
  });

  it('reports bytes that cannot start a reply, after delivering the good objects before them', () => {
    const r = scanAll(['{"id":1}garbage']);
    expect(r.values).toEqual([{ id: 1 }]);
    expect(r.error).toMatch(/expected '\{'/);
  });

  it('reports balanced but invalid JSON', () => {
    expect(scanAll(['{not json}']).error).toMatch(/not valid JSON/);
  });

  it('stays broken after an error until reset', () => {
    const s = new JsonStreamScanner();
    expect(s.push(Buffer.from('x')).error).toBeDefined();
    expect(s.push(Buffer.from('{"id":1}')).error).toBeDefined();
    s.reset();
    expect(s.push(Buffer.from('{"id":1}')).values).toEqual([{ id: 1 }]);
  });

  it('bounds memory on an object that never ends', () => {
    const s = new JsonStreamScanner(64);
    const r = s.push(Buffer.from('{"a":"' + 'x'.repeat(100)));
    expect(r.error?.message).toMatch(/exceeds 64 bytes/);
  });

  it('recovers any sequence of JSON objects from any chunking (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.dictionary(fc.string(), fc.jsonValue()), { minLength: 1, maxLength: 5 }),
        fc.array(fc.nat(), { maxLength: 10 }),
        fc.boolean(),
        (objs, cuts, newline) => {
          const buf = Buffer.from(objs.map((o) => JSON.stringify(o) + (newline ? '\n' : '')).join(''));
          const points = [...new Set(cuts.map((c) => c % (buf.length + 1)))].sort((a, b) => a - b);
          const chunks: Buffer[] = [];
          let prev = 0;
          for (const p of points) {
            chunks.push(buf.subarray(prev, p));
            prev = p;
          }
          chunks.push(buf.subarray(prev));
          const r = scanAll(chunks);
          expect(r.error).toBeUndefined();
          // JSON round trip normalises -0 and the like, as the wire does.
          expect(r.values).toEqual(objs.map((o) => JSON.parse(JSON.stringify(o))));
        },
      ),
      { numRuns: 300 },
    );
  });
});
