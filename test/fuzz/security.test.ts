import { isUtf8 } from 'node:buffer';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../src/api/errors.js';
import { LIMITS } from '../../src/api/limits.js';
import { parseVolumesAnnotation } from '../../src/api/volumes.js';
import { headerProblem } from '../../src/backend/image-inspect.js';
import { ConvertError } from '../../src/converter/errors.js';
import { decodeUtf8Strict } from '../../src/converter/utf8.js';

/**
 * The classes of the security review, kept closed by property: a `bdev:` never reaches a
 * node as a path, sizes and durations stay bounded, an image header naming a backing or data
 * file is always refused, non-UTF-8 bytes never pass. FUZZ_RUNS / FUZZ_SEED as in inputs.test.ts.
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? '200');
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : Math.floor(Math.random() * 2 ** 31);
const params = { numRuns: RUNS, seed: SEED };
console.log(`[fuzz] security seed=${SEED} runs=${RUNS} (replay with FUZZ_SEED=${SEED})`);

const segment = fc.oneof(fc.constantFrom('..', '.', '', 'etc', 'shadow', 'lvs', 'nvme0n1', 'a:b', '.hidden', '_x', '-x', '..x'), fc.string({ maxLength: 6 }));
const pathLike = fc.tuple(fc.boolean(), fc.array(segment, { minLength: 1, maxLength: 5 })).map(([abs, segs]) => `${abs ? '/' : ''}${segs.join('/')}`);

function parsed(text: string): ReturnType<typeof parseVolumesAnnotation> | undefined {
  try {
    return parseVolumesAnnotation(text);
  } catch (e) {
    if (e instanceof ValidationError) return undefined;
    throw e;
  }
}

describe('fuzz: bdev names are never paths (F1)', () => {
  it('an accepted bdev has no leading "/", no "." or ".." component, at most one "/"', () => {
    fc.assert(
      fc.property(pathLike, (bdev) => {
        const vols = parsed(JSON.stringify([{ name: 'd', spdkVhostBlkDisk: { bdev } }]));
        if (!vols) return;
        const got = vols[0]?.spdkVhostBlkDisk.bdev ?? '';
        const parts = got.split('/');
        expect(got.startsWith('/')).toBe(false);
        expect(parts.length).toBeLessThanOrEqual(2);
        for (const p of parts) {
          expect(p.length).toBeGreaterThan(0);
          expect(p.startsWith('.')).toBe(false);
        }
      }),
      params,
    );
  });
});

describe('fuzz: sizes and durations are bounded (F12)', () => {
  it('an accepted capacity is a safe integer within the limit; a timeout within its limit', () => {
    const quantity = fc.oneof(
      fc.tuple(fc.integer({ min: 0, max: 2 ** 20 }), fc.constantFrom('', 'k', 'Ki', 'M', 'Mi', 'G', 'Gi', 'T', 'Ti', 'P', 'Pi', 'E', 'Ei', 'e3', 'e18')).map(([n, u]) => `${n}${u}`),
      fc.double({ min: 0, max: 1e30, noNaN: true }).map(String),
    );
    const duration = fc.tuple(fc.integer({ min: 0, max: 10 ** 9 }), fc.constantFrom('s', 'm', 'h', 'ms')).map(([n, u]) => `${n}${u}`);
    fc.assert(
      fc.property(quantity, duration, (capacity, reconnectTimeout) => {
        const vols = parsed(JSON.stringify([{ name: 'd', spdkVhostBlkDisk: { blank: {}, capacity, reconnectTimeout } }]));
        if (!vols) return;
        const d = vols[0]!.spdkVhostBlkDisk;
        expect(Number.isSafeInteger(d.capacity?.bytes)).toBe(true);
        expect(d.capacity!.bytes).toBeLessThanOrEqual(LIMITS.maxDiskBytes);
        expect(d.reconnectTimeout).toBeLessThanOrEqual(LIMITS.maxReconnectTimeoutSeconds);
      }),
      params,
    );
  });
});

describe('fuzz: image headers (F2)', () => {
  const QFI = [0x51, 0x46, 0x49, 0xfb];
  it('never throws on any bytes, and a qcow2 header with a backing file or the data-file bit is always refused', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), fc.constantFrom<'raw' | 'qcow2'>('raw', 'qcow2'), (bytes, format) => {
        headerProblem(Buffer.from(bytes), format);
      }),
      params,
    );
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 512, maxLength: 512 }),
        fc.constantFrom(2, 3),
        fc.bigInt({ min: 1n, max: 2n ** 64n - 1n }),
        fc.boolean(),
        (rest, version, backingOffset, dataFileBit) => {
          const h = Buffer.from(rest);
          Buffer.from(QFI).copy(h, 0);
          h.writeUInt32BE(version, 4);
          if (version === 3 && dataFileBit) {
            h.writeBigUInt64BE(0n, 8);
            h.writeUInt32BE(0, 16);
            h.writeBigUInt64BE(h.readBigUInt64BE(72) | 4n, 72);
          } else h.writeBigUInt64BE(backingOffset, 8);
          expect(headerProblem(h, 'qcow2')).toMatch(/backing file|external data file/);
          expect(headerProblem(h, 'raw')).toMatch(/declared format raw/);
        },
      ),
      params,
    );
  });
});

describe('fuzz: UTF-8 (F15)', () => {
  it('valid bytes decode unchanged; invalid ones give a ConvertError whose offset ends a valid prefix', () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.string({ unit: 'binary' }).map((s) => new Uint8Array(Buffer.from(s, 'utf8')))), (bytes) => {
        const buf = Buffer.from(bytes);
        if (isUtf8(buf)) {
          expect(decodeUtf8Strict(buf, 'x')).toBe(buf.toString('utf8'));
          return;
        }
        let err: unknown;
        try {
          decodeUtf8Strict(buf, 'x');
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(ConvertError);
        const offset = Number(/at offset (\d+)$/.exec((err as ConvertError).problems[0] ?? '')?.[1]);
        expect(isUtf8(buf.subarray(0, offset))).toBe(true);
        expect(offset).toBeLessThan(buf.length);
      }),
      params,
    );
  });
});
