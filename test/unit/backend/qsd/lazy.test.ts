import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { LIMITS } from '../../../../src/api/limits.js';
import { nbdUri, sizeProblem, sourceOf } from '../../../../src/backend/qsd/sources.js';
import { contentSha256 } from '../../../../src/backend/qsd/verify.js';
import type { RemoteDiskRef } from '../../../../src/backend/types.js';

const http = { kind: 'http' as const, url: 'http://origin/img.raw' };
const peerRef: RemoteDiskRef = { transport: 'nbd', address: { kind: 'tcp', host: '10.0.0.2', port: 10809 }, exportName: 'nbd.img', sizeBytes: 4096 };

describe('lazy sources: size rule (the same as a full import)', () => {
  it('accepts up to the declared size and refuses more, naming both', () => {
    expect(sizeProblem(4096, 4096, http)).toBeUndefined();
    expect(sizeProblem(1024, 4096, http)).toBeUndefined();
    expect(sizeProblem(4097, 4096, http)).toBe('actual size 4097 bytes is larger than the declared size 4096 bytes');
  });
  it('bounds an undeclared image by the limit, and refuses an empty source', () => {
    expect(sizeProblem(LIMITS.maxUndeclaredImageBytes, undefined, http)).toBeUndefined();
    expect(sizeProblem(LIMITS.maxUndeclaredImageBytes + 1, undefined, http)).toMatch(/larger than the limit/);
    expect(sizeProblem(0, undefined, http)).toBe('source is empty');
  });
  it('a peer export must have the size its reference states', () => {
    expect(sizeProblem(4096, undefined, { kind: 'peer', ref: peerRef })).toBeUndefined();
    expect(sizeProblem(8192, undefined, { kind: 'peer', ref: peerRef })).toBe('peer export is 8192 bytes, its reference says 4096');
  });
});

describe('lazy sources: where an image is read from', () => {
  it('prefers a peer, then an http origin; a host path is never lazy', () => {
    const base = { name: 'i', format: 'raw' as const };
    expect(sourceOf({ ...base, source: { http: { url: 'https://o/x', sha256: 'a'.repeat(64) } } })).toEqual({ kind: 'http', url: 'https://o/x' });
    expect(sourceOf({ ...base, source: { http: { url: 'https://o/x', sha256: 'a'.repeat(64) } }, peer: peerRef })).toEqual({ kind: 'peer', ref: peerRef });
    expect(() => sourceOf({ ...base, source: { hostPath: { path: '/x' } } })).toThrow(/needs an http\(s\) origin or a peer/);
    expect(() => sourceOf({ ...base, source: { hostPath: { path: '/x' } }, peer: { transport: 'nvmf-tcp', host: 'h', port: 1, adrfam: 'ipv4', subnqn: 'nqn.x', sizeBytes: 1 } })).toThrow(
      /NBD only, not nvmf-tcp/,
    );
  });
  it('writes NBD backing names as QEMU parses them', () => {
    expect(nbdUri({ ...peerRef, transport: 'nbd' })).toBe('nbd://10.0.0.2:10809/nbd.img');
    expect(nbdUri({ transport: 'nbd', address: { kind: 'tcp', host: 'fd00::2', port: 10809 }, exportName: 'a b', sizeBytes: 0 })).toBe('nbd://[fd00::2]:10809/a%20b');
    expect(nbdUri({ transport: 'nbd', address: { kind: 'unix', path: '/run/x.sock' }, exportName: 'e', sizeBytes: 0 })).toBe('nbd+unix:///e?socket=/run/x.sock');
  });
});

const haveQemuImg = spawnSync('qemu-img', ['--version'], { stdio: 'ignore' }).status === 0;

describe.skipIf(!haveQemuImg)('content sha256 of a qcow2 golden', () => {
  it('equals the sha256 of the raw image it holds, data and zero extents alike', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qsdverify-'));
    try {
      const raw = Buffer.alloc(8 * 1024 * 1024);
      randomBytes(3 * 1024 * 1024).copy(raw, 1024 * 1024); // zeros, data, zeros
      await fs.writeFile(path.join(dir, 'img.raw'), raw);
      const q = path.join(dir, 'img.qcow2');
      expect(spawnSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', path.join(dir, 'img.raw'), q]).status).toBe(0);
      const want = createHash('sha256').update(raw).digest('hex');
      expect(await contentSha256(q, raw.length, 'qemu-img')).toBe(want);
      await expect(contentSha256(q, raw.length + 512, 'qemu-img')).rejects.toThrow(/map covers/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
