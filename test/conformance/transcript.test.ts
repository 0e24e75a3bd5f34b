import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SpdkSimulator, type SpdkVersion } from '../../testing/spdk-sim/index.js';
import { RawRpcClient } from '../unit/simulator/rpc-client.js';
import { REPO_ROOT } from '../helpers/cli.js';
import { ReplayConnection, UuidMap, diff, loadRecording, requestId } from './replay.js';

/**
 * Replays the single-connection recordings of real targets against the simulator answering
 * as the same release, over a real unix socket, in order, byte for byte (request_raw
 * included). Expected values come from the recordings only; answers are matched by id (SPDK
 * answers each request when it completes) and compared with `diff` (UUIDs as a consistent
 * mapping, everything else exact). Each mismatch is reported with its exchange's note.
 */
const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'spdk');
const MiB = 1024 * 1024;
// The recordings waited 10 s (5 s for the probe) for an answer; nothing arrives later here either.
const NO_ANSWER_WAIT_MS = 300;

interface Recording {
  file: string;
  version: SpdkVersion;
  /** Recorded path -> the file (size in bytes) or directory (size undefined) it stands for. */
  paths: Record<string, { name: string; bytes?: number }>;
  minExchanges: number;
}

const RECORDINGS: Recording[] = [
  {
    // Needs the image larger than lvs0's 31 free clusters (inflate: ENOSPC) and OCF's cache too small.
    file: 'v24.01-rpc-transcript.jsonl',
    version: '24.01',
    paths: { '/images/golden.raw': { name: 'golden.raw', bytes: 64 * MiB }, '/var/lib/kubevirt-spdk/vhost': { name: 'vhost' } },
    minExchanges: 50,
  },
  {
    file: 'v25.09-rpc-transcript.jsonl',
    version: '25.09',
    paths: { '/images/golden.raw': { name: 'golden.raw', bytes: 64 * MiB }, '/var/lib/kubevirt-spdk/vhost': { name: 'vhost' } },
    minExchanges: 50,
  },
  {
    // Recorded with our own v24.01 build where the first recording is silent (README.md).
    file: 'v24.01-probe-transcript.jsonl',
    version: '24.01',
    paths: {
      '/rec/img.raw': { name: 'img.raw', bytes: 64 * MiB },
      '/rec/lvs.raw': { name: 'lvs.raw', bytes: 1024 * MiB },
      '/rec/odd.raw': { name: 'odd.raw', bytes: 30 * MiB },
      '/rec/vhost': { name: 'vhost' },
    },
    minExchanges: 55,
  },
];

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await fs.rm(d, { recursive: true, force: true });
});

describe.each(RECORDINGS)('recording $file replayed against spdk-sim --version $version', (rec) => {
  it('answers every exchange as recorded, in order, on one connection', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cf-'));
    dirs.push(dir);
    for (const { name, bytes } of Object.values(rec.paths)) {
      if (bytes === undefined) await fs.mkdir(path.join(dir, name));
      else {
        const fh = await fs.open(path.join(dir, name), 'w');
        await fh.truncate(bytes);
        await fh.close();
      }
    }
    const mapPaths = (line: string): string =>
      Object.entries(rec.paths).reduce((text, [from, { name }]) => text.split(from).join(path.join(dir, name)), line);
    const exchanges = await loadRecording(path.join(FIXTURES, rec.file), mapPaths);
    expect(exchanges.length).toBeGreaterThanOrEqual(rec.minExchanges);
    const vhost = Object.values(rec.paths).find((p) => p.bytes === undefined)?.name ?? 'vhost';
    const sim = new SpdkSimulator({ socketPath: path.join(dir, 'rpc.sock'), vhostDir: path.join(dir, vhost), cpumask: '0x1', version: rec.version });
    await sim.start();
    const conn = new ReplayConnection(await RawRpcClient.connect(path.join(dir, 'rpc.sock')));
    const uuids = new UuidMap();
    const problems: string[] = [];
    try {
      for (const [i, ex] of exchanges.entries()) {
        const label = `#${i + 1} ${ex.note ?? ''}`;
        conn.send(ex);
        if (ex.response !== undefined) {
          const got = await conn.answer(ex.response.id, 5000);
          if (got.kind !== 'answer') {
            problems.push(`${label}: expected a "\\n"-terminated response, got ${got.kind}${got.kind === 'closed' ? ` (partial ${JSON.stringify(got.partial)})` : ''}`);
            break;
          }
          problems.push(...diff(ex.response, got.body, uuids).map((p) => `${label}: ${p}`));
        } else if (ex.outcome === 'no response: timed out') {
          const id = requestId(ex);
          const got = id === undefined ? await conn.anyAnswer(NO_ANSWER_WAIT_MS) : await conn.answer(id, NO_ANSWER_WAIT_MS);
          if (got.kind !== 'none') problems.push(`${label}: expected no answer, got ${JSON.stringify(got)}`);
        } else if (ex.outcome === 'no response: closed') {
          const got = await conn.anyAnswer(5000);
          if (got.kind !== 'closed' || got.partial !== '') problems.push(`${label}: expected the connection closed unanswered, got ${JSON.stringify(got)}`);
        } else {
          problems.push(`${label}: the recording has neither a response nor a known outcome`);
        }
      }
    } finally {
      conn.client.close();
      await sim.stop();
    }
    expect(problems).toEqual([]);
  });
});
