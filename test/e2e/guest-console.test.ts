/**
 * The console reader that the VM tests rely on: it must find the guest's `KS:` lines however
 * the serial output is chunked, keep their order, and fail fast when the guest reports FAIL.
 */
import { afterEach, describe, expect, it } from 'vitest';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { GuestConsole, guestCmdline, parseKsLine } from '../helpers/guest.js';

describe('guest console reader', () => {
  it('parses KS lines behind firmware escapes and CRLF, ignores kernel lines', () => {
    expect(parseKsLine('\x1bc\x1b[?7l\x1b[2JKS: BOOT mode=e2e seq=0\r')).toEqual({ word: 'BOOT', rest: 'mode=e2e seq=0', line: 'KS: BOOT mode=e2e seq=0' });
    expect(parseKsLine('KS: POWEROFF')).toEqual({ word: 'POWEROFF', rest: '', line: 'KS: POWEROFF' });
    expect(parseKsLine('[    8.342774] reboot: Power down')).toBeUndefined();
  });

  it('waits for events in order across chunk boundaries', async () => {
    const con = new GuestConsole();
    const golden = con.waitFor('GOLDEN', 5_000);
    con.feed('[ 1.0] kernel noise\r\nKS: GOL');
    con.feed('DEN KS-GOLDEN abc\r\nKS: SEQ 0\r\nKS: SEQ 1\r\nKS: SEQ 2\r\n');
    expect((await golden).rest).toBe('KS-GOLDEN abc');
    // The cursor moved past GOLDEN: the next SEQ >= 1 is record 1, not an earlier line.
    expect((await con.waitFor('SEQ', 5_000, (r) => Number(r) >= 1)).rest).toBe('1');
    expect((await con.waitFor('SEQ', 5_000)).rest).toBe('2');
    // Already consumed: GOLDEN does not match again.
    await expect(con.waitFor('GOLDEN', 50)).rejects.toThrow(/no "KS: GOLDEN" within 50 ms/);
  });

  it('rejects at once with the guest line when the guest reports FAIL', async () => {
    const con = new GuestConsole();
    const verify = con.waitFor('VERIFY', 60_000);
    con.feed('KS: SEQ 4\nKS: FAIL writing record 5 failed\n');
    await expect(verify).rejects.toThrow(/guest failed: KS: FAIL writing record 5 failed/);
  });

  it('refuses a tag that would break the kernel command line', () => {
    expect(guestCmdline({ seq: 3, tag: 'run-1' })).toContain('ks.seq=3 ks.tag=run-1');
    expect(() => guestCmdline({ tag: 'two words' })).toThrow(/must match/);
  });

  describe('over a unix socket', () => {
    let dir: string | undefined;
    let server: net.Server | undefined;
    afterEach(async () => {
      server?.close();
      if (dir) await fs.rm(dir, { recursive: true, force: true });
    });

    it('reads what the guest prints and types lines back', async () => {
      dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ksc-'));
      const sock = path.join(dir, 'con');
      const typed = new Promise<string>((resolve) => {
        server = net.createServer((s) => {
          s.setEncoding('utf8');
          s.write('KS: MARKER OK t1\r\n');
          s.on('data', (d: string) => resolve(d));
        });
      });
      await new Promise<void>((resolve) => server?.listen(sock, resolve));
      const con = await GuestConsole.connect(sock, 5_000);
      try {
        expect((await con.waitFor('MARKER', 5_000)).rest).toBe('OK t1');
        con.send('stop');
        expect(await typed).toBe('stop\n');
      } finally {
        con.close();
      }
    });
  });
});
