import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { writeFileAtomic } from '../../../src/fsutil.js';
import { Journal, JournalError } from '../../../src/agent/journal.js';
import { ensureSlotDir } from '../../../src/backend/vhost-fs.js';

/**
 * The node's own files under hostile conditions: a full disk, a read-only vhost dir, a
 * journal that is not a file. Full and read-only file systems are real (tmpfs mounts), so
 * those cases need root with mount rights and are skipped otherwise.
 */
const canMount = (() => {
  if (process.getuid?.() !== 0) return false;
  const probe = spawnSync('sh', ['-c', 'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d" && umount "$d"; s=$?; rmdir "$d"; exit $s']);
  return probe.status === 0;
})();

let dir: string;
const mounts: string[] = [];
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sf-'));
});
afterEach(async () => {
  for (const m of mounts.splice(0)) spawnSync('umount', [m]);
  await fs.rm(dir, { recursive: true, force: true });
});

function mountTmpfs(at: string, options: string): void {
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', at]);
  if (r.status !== 0) throw new Error(`mount failed: ${r.stderr.toString()}`);
  mounts.push(at);
}

describe('F16: journal.json that is not a file', () => {
  it('a directory is refused by name, with what to do', async () => {
    await fs.mkdir(path.join(dir, 'journal.json'));
    const err = await Journal.open(dir).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(JournalError);
    expect((err as Error).message).toBe(`journal ${path.join(dir, 'journal.json')} is a directory; move it out of the state dir and start again`);
  });
});

describe.skipIf(!canMount)('on real full and read-only file systems (tmpfs)', () => {
  it('F13: a write that hits ENOSPC fails and leaves no temp file behind, however often it is tried', async () => {
    const small = path.join(dir, 'small');
    await fs.mkdir(small);
    mountTmpfs(small, 'size=64k');
    const big = 'x'.repeat(256 * 1024);
    for (let i = 0; i < 3; i++) {
      await expect(writeFileAtomic(path.join(small, 'journal.json'), big)).rejects.toMatchObject({ code: 'ENOSPC' });
    }
    expect(await fs.readdir(small)).toEqual([]);
    // And the disk is usable again for a write that fits.
    await writeFileAtomic(path.join(small, 'journal.json'), '{}\n');
    expect(await fs.readdir(small)).toEqual(['journal.json']);
  });

  it('F14: a read-only vhost dir is reported as not writable, not as a missing file', async () => {
    const vhost = path.join(dir, 'vhost');
    await fs.mkdir(vhost);
    mountTmpfs(vhost, 'ro,size=64k');
    await expect(ensureSlotDir(vhost, 'slot-01')).rejects.toThrow(new RegExp(`^vhost dir ${vhost} is not writable \\(EROFS`));
  });
});
