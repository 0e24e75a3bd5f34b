/**
 * The recorded RPC sequences (test/fixtures/spdk/) replayed against a real spdk_tgt of the same
 * release: the answers must still be what the recording says (error codes and messages; result
 * types and every recorded field present). This keeps the recordings, and so the simulator
 * and the client's error classification built on them, honest for the binaries a user runs.
 * Requests are written as recorded on one connection; exchanges that got no answer (a
 * notification, a parse error that closes the connection) are not replayed. Opt-in: SPDK_TGT.
 */
import { readFileSync } from 'node:fs';
import { rm, truncate, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { JsonStreamScanner } from '../../src/spdk/framing.js';
import { REPO_ROOT } from '../helpers/cli.js';
import { cases, RealTarget, realSpdkOrSkip, shortTempDir } from './target.js';

const targets = realSpdkOrSkip('test/spdk/replay.test.ts');

interface Entry {
  note: string;
  request?: Record<string, unknown>;
  request_raw?: string;
  response?: { id: unknown; result?: unknown; error?: { code: number; message: string } };
  outcome?: string;
}

function load(file: string): Entry[] {
  return readFileSync(path.join(REPO_ROOT, 'test', 'fixtures', 'spdk', file), 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Entry);
}

/** One connection; replies are read in order (the recorded sequence waits for each). */
class Wire {
  private readonly scanner = new JsonStreamScanner();
  private readonly queue: unknown[] = [];
  private waiter: (() => void) | undefined;
  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (b: Buffer) => {
      this.queue.push(...this.scanner.push(b).values);
      this.waiter?.();
    });
  }
  static open(p: string): Promise<Wire> {
    return new Promise((resolve, reject) => {
      const s = net.connect(p);
      s.once('connect', () => resolve(new Wire(s)));
      s.once('error', reject);
    });
  }
  write(text: string): void {
    this.socket.write(text);
  }
  async next(timeoutMs = 15_000): Promise<unknown> {
    const end = Date.now() + timeoutMs;
    while (this.queue.length === 0) {
      if (Date.now() > end) throw new Error('no reply');
      await new Promise<void>((r) => {
        this.waiter = r;
        setTimeout(r, 50);
      });
    }
    return this.queue.shift();
  }
  close(): void {
    this.socket.destroy();
  }
}

const kindOf = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

/** Every key the recording has is in the real answer (values differ: UUIDs, paths). */
function missingKeys(recorded: unknown, real: unknown, at = 'result'): string[] {
  if (kindOf(recorded) !== kindOf(real)) return [`${at}: ${kindOf(recorded)} recorded, ${kindOf(real)} now`];
  if (Array.isArray(recorded) && Array.isArray(real)) return recorded.length && real.length ? missingKeys(recorded[0], real[0], `${at}[0]`) : [];
  if (kindOf(recorded) === 'object') {
    const r = recorded as Record<string, unknown>;
    const n = real as Record<string, unknown>;
    return Object.keys(r).flatMap((k) => (k in n ? missingKeys(r[k], n[k], `${at}.${k}`) : [`${at}.${k}: missing`]));
  }
  return [];
}

let cleanup: (() => Promise<void>) | undefined;
afterEach(async () => {
  await cleanup?.();
  cleanup = undefined;
});

describe.skipIf(targets.length === 0).each(cases(targets))('recorded RPC sequence against a real spdk_tgt ($label)', ({ bin }) => {
  it('answers as recorded for its release', async () => {
    const dir = await shortTempDir('kr-');
    const tgt = new RealTarget(bin, path.join(dir, 'rpc.sock'), path.join(dir, 'vh'));
    cleanup = async () => {
      await tgt.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    };
    await tgt.start();
    const file = tgt.version.startsWith('SPDK v24.01') ? 'v24.01-rpc-transcript.jsonl' : 'v25.09-rpc-transcript.jsonl';
    // The recording's image: larger than its 31-cluster lvstore, so that inflate runs out of space.
    const golden = path.join(dir, 'golden.raw');
    await writeFile(golden, '');
    await truncate(golden, 64 * 2 ** 20);
    const subst = (text: string): string => text.replaceAll('/images/golden.raw', golden);

    const methods = new Set<string>();
    const wire = await Wire.open(tgt.socketPath);
    const problems: string[] = [];
    const skipped: string[] = [];
    try {
      wire.write(JSON.stringify({ jsonrpc: '2.0', method: 'rpc_get_methods', id: 'methods' }));
      for (const m of ((await wire.next()) as { result: string[] }).result) methods.add(m);
      for (const e of load(file)) {
        if (e.outcome !== undefined) continue; // no answer was recorded: nothing to compare
        if (e.request) wire.write(subst(JSON.stringify(e.request)));
        else if (e.request_raw !== undefined) wire.write(subst(e.request_raw));
        const expected = e.response;
        if (!expected) continue;
        const got = (await wire.next()) as { result?: unknown; error?: { code: number; message: string } };
        const method = typeof e.request?.method === 'string' ? e.request.method : '';
        // A module left out of this build (OCF is optional) answers "Method not found".
        if (got.error?.code === -32601 && method !== '' && !methods.has(method) && method.startsWith('bdev_ocf_')) {
          skipped.push(`${e.note}: ${method} not built into this spdk_tgt`);
          continue;
        }
        if (expected.error) {
          if (!got.error || got.error.code !== expected.error.code || got.error.message !== expected.error.message) {
            problems.push(`${e.note}: recorded error ${JSON.stringify(expected.error)}, now ${JSON.stringify(got.error ?? { result: got.result })}`);
          }
        } else if (got.error) {
          problems.push(`${e.note}: recorded a result, now error ${JSON.stringify(got.error)}`);
        } else {
          problems.push(...missingKeys(expected.result, got.result).map((p) => `${e.note}: ${p}`));
        }
      }
    } finally {
      wire.close();
    }
    if (skipped.length) process.stdout.write(`[replay ${tgt.version}] not compared: ${skipped.join('; ')}\n`);
    expect(problems, `${tgt.version} vs ${file}`).toEqual([]);
  });
});
