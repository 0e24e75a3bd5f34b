import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SpdkSimulator } from '../../src/simulator/index.js';
import { RawRpcClient } from '../unit/simulator/rpc-client.js';
import { TRANSCRIPT_PATH } from '../helpers/fake-spdk.js';

/**
 * Replays every exchange of the SPDK v24.01 recording against the simulator over a real unix
 * socket, in order, on one connection, byte for byte (request_raw included). Expected values
 * come from the recording only. UUIDs are compared as a consistent mapping: a UUID that
 * appears twice in the recording must map to the same simulator UUID both times.
 */
// The ground truth: a recording of a real v24.01 target, kept in the repository.
const RECORDING = TRANSCRIPT_PATH;
// Paths the recording was made with, mapped to files of this run.
const RECORDED_IMAGE = '/images/golden.raw';
const RECORDED_VHOST_DIR = '/var/lib/kubevirt-spdk/vhost';
// Recorded outcomes need the image larger than the 31 free clusters of lvs0 (inflate fails
// with ENOSPC) and the cache device too small for OCF.
const IMAGE_BYTES = 64 * 1024 * 1024;
// The recording waited 10 s for an answer; nothing arrives later in the simulator either.
const NO_ANSWER_WAIT_MS = 300;

interface Exchange {
  note: string;
  request?: unknown;
  request_raw?: string;
  response?: unknown;
  outcome?: string;
  raw_ends_with_newline?: boolean;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Differences between expected and actual JSON, UUIDs matched through `uuids`. */
function diff(expected: unknown, actual: unknown, uuids: Map<string, string>, at = '$'): string[] {
  if (typeof expected === 'string' && UUID_RE.test(expected)) {
    if (typeof actual !== 'string' || !UUID_RE.test(actual)) return [`${at}: expected a UUID, got ${JSON.stringify(actual)}`];
    const mapped = uuids.get(expected);
    if (mapped === undefined) {
      if ([...uuids.values()].includes(actual)) return [`${at}: UUID ${actual} already stands for another recorded UUID`];
      uuids.set(expected, actual);
      return [];
    }
    return mapped === actual ? [] : [`${at}: expected the UUID seen before as ${mapped}, got ${actual}`];
  }
  if (Array.isArray(expected)) {
    if (!Array.isArray(actual)) return [`${at}: expected an array, got ${JSON.stringify(actual)}`];
    if (actual.length !== expected.length) return [`${at}: expected ${expected.length} items, got ${actual.length}: ${JSON.stringify(actual)}`];
    return expected.flatMap((e, i) => diff(e, actual[i], uuids, `${at}[${i}]`));
  }
  if (expected !== null && typeof expected === 'object') {
    if (actual === null || typeof actual !== 'object' || Array.isArray(actual)) return [`${at}: expected an object, got ${JSON.stringify(actual)}`];
    const e = expected as Record<string, unknown>;
    const a = actual as Record<string, unknown>;
    const keys = new Set([...Object.keys(e), ...Object.keys(a)]);
    return [...keys].flatMap((k) => {
      if (!(k in a)) return [`${at}.${k}: missing`];
      if (!(k in e)) return [`${at}.${k}: not in the recording (${JSON.stringify(a[k])})`];
      return diff(e[k], a[k], uuids, `${at}.${k}`);
    });
  }
  return Object.is(expected, actual) ? [] : [`${at}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`];
}

describe('SPDK v24.01 recording replayed against the simulator', () => {
  let dir: string;
  let sim: SpdkSimulator;
  let exchanges: Exchange[];
  const mapPaths = (text: string): string => text.split(RECORDED_IMAGE).join(path.join(dir, 'golden.raw')).split(RECORDED_VHOST_DIR).join(path.join(dir, 'vhost'));

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cf-'));
    await fs.mkdir(path.join(dir, 'vhost'));
    const fh = await fs.open(path.join(dir, 'golden.raw'), 'w');
    await fh.truncate(IMAGE_BYTES);
    await fh.close();
    const text = await fs.readFile(RECORDING, 'utf8');
    exchanges = text
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(mapPaths(l)) as Exchange);
    sim = new SpdkSimulator({ socketPath: path.join(dir, 'rpc.sock'), vhostDir: path.join(dir, 'vhost'), cpumask: '0x1' });
    await sim.start();
  });

  afterAll(async () => {
    await sim?.stop();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('answers every exchange as recorded, in order, on one connection', async () => {
    expect(exchanges.length).toBeGreaterThanOrEqual(50);
    const client = await RawRpcClient.connect(path.join(dir, 'rpc.sock'));
    const uuids = new Map<string, string>();
    const problems: string[] = [];
    try {
      for (const [i, ex] of exchanges.entries()) {
        const label = `#${i + 1} ${ex.note}`;
        if (ex.request_raw !== undefined) client.write(ex.request_raw);
        else if (ex.request !== undefined) client.write(JSON.stringify(ex.request));
        if (ex.response !== undefined) {
          const got = await client.nextLine(5000);
          if (got.kind !== 'line') {
            problems.push(`${label}: expected a "\\n"-terminated response, got ${got.kind}${got.kind === 'closed' ? ` (partial ${JSON.stringify(got.partial)})` : ''}`);
            break;
          }
          problems.push(...diff(ex.response, JSON.parse(got.text), uuids).map((p) => `${label}: ${p}`));
        } else if (ex.outcome === 'no response: timed out') {
          const got = await client.nextLine(NO_ANSWER_WAIT_MS);
          if (got.kind !== 'timeout') problems.push(`${label}: expected no answer, got ${JSON.stringify(got)}`);
        } else if (ex.outcome === 'no response: closed') {
          const got = await client.nextLine(5000);
          if (got.kind !== 'closed' || got.partial !== '') problems.push(`${label}: expected the connection closed unanswered, got ${JSON.stringify(got)}`);
        } else {
          problems.push(`${label}: the recording has neither a response nor a known outcome`);
        }
      }
    } finally {
      client.close();
    }
    expect(problems).toEqual([]);
  });
});
