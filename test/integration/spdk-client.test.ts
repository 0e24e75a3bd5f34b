/**
 * SpdkRpcClient + SpdkApi against the scripted fake (test/helpers/fake-spdk.ts), which
 * answers with replies recorded from a real spdk_tgt v24.01.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SpdkApi } from '../../src/spdk/api.js';
import { MAX_REQUEST_BYTES, SpdkRpcClient } from '../../src/spdk/client.js';
import { SpdkError, classifySpdkError, type SpdkErrorKind } from '../../src/spdk/errors.js';
import { FakeSpdk, loadTranscript, type RecordedRequest } from '../helpers/fake-spdk.js';

async function rejection(p: Promise<unknown>): Promise<SpdkError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(SpdkError);
    return e as SpdkError;
  }
  throw new Error('expected the call to fail');
}

const sameParams = (a: RecordedRequest, b: RecordedRequest): boolean =>
  a.method === b.method && JSON.stringify(a.params ?? null) === JSON.stringify(b.params ?? null);

let fake: FakeSpdk;
let client: SpdkRpcClient;
let api: SpdkApi;

beforeEach(async () => {
  fake = await FakeSpdk.start();
  client = new SpdkRpcClient({ socketPath: fake.socketPath, timeoutMs: 5_000, reconnect: { initialDelayMs: 10, maxDelayMs: 50 } });
  api = new SpdkApi(client);
  await client.connect();
});

afterEach(async () => {
  await client.close();
  await fake.stop();
});

describe('wire format', () => {
  it('sends no params member for methods called without params', async () => {
    await api.spdkGetVersion();
    await api.frameworkWaitInit();
    await api.bdevGetBdevs();
    await api.vhostGetControllers({ name: undefined });
    expect(fake.received).toHaveLength(4);
    for (const r of fake.received) expect(r.request).not.toHaveProperty('params');
  });

  it('sends params with SPDK names and returns the validated result', async () => {
    const version = await api.spdkGetVersion();
    expect(version.fields.major).toBe(24);
    const name = await api.bdevMallocCreate({ name: 'Malloc0', num_blocks: 8192, block_size: 4096 });
    expect(name).toBe('Malloc0');
    expect(fake.received[1]?.request.params).toEqual({ name: 'Malloc0', num_blocks: 8192, block_size: 4096 });
    const lvols = await api.bdevLvolGetLvols({ lvs_name: 'lvs0' });
    expect(lvols.find((l) => l.name === 'vm2-disk0')?.is_esnap_clone).toBe(true);
  });

  it('matches replies to calls by id when many are in flight and answered in reverse order', async () => {
    fake.hold = true;
    fake.handler = (req) => ({ result: [{ name: req.params?.name, product_name: 'Malloc disk', block_size: 512, num_blocks: 1 }] });
    const names = Array.from({ length: 20 }, (_, i) => `b${i}`);
    const calls = names.map((name) => api.bdevGetBdevs({ name }));
    await fake.waitForRequests(names.length);
    fake.releaseHeld('reverse');
    const results = await Promise.all(calls);
    expect(results.map((r) => r[0]?.name)).toEqual(names);
    expect(fake.connections).toBe(1);
  });

  it('parses replies that arrive a few bytes at a time', async () => {
    fake.chunkBytes = 3;
    const [a, b] = await Promise.all([api.bdevGetBdevs({ name: 'Malloc0' }), api.spdkGetVersion()]);
    expect(a[0]?.name).toBe('Malloc0');
    expect(b.version).toBe('SPDK v24.01');
  });
});

describe('timeouts and cancellation', () => {
  it('times out one call without poisoning the connection; the late reply is dropped', async () => {
    fake.hold = true;
    const err = await rejection(api.bdevGetBdevs({ name: 'late' }, { timeoutMs: 50 }));
    expect(err.kind).toBe('timeout');
    expect(err.code).toBe(0);
    expect(err.rpcMessage).toBe('no reply within 50ms');
    expect(client.pending).toBe(0);

    fake.releaseHeld(); // the late reply for the timed-out id
    fake.hold = false;
    fake.handler = (req) => ({ result: [{ name: req.params?.name, product_name: 'x', block_size: 512, num_blocks: 1 }] });
    const after = await api.bdevGetBdevs({ name: 'next' });
    expect(after[0]?.name).toBe('next');
    expect(client.connected).toBe(true);
  });

  it('cancels a call with an AbortSignal', async () => {
    fake.hold = true;
    const ac = new AbortController();
    const p = rejection(api.spdkGetVersion({ signal: ac.signal }));
    await fake.waitForRequests(1);
    ac.abort(new Error('reconcile cancelled'));
    const err = await p;
    expect(err.kind).toBe('timeout');
    expect(err.context.cancelled).toBe(true);
    expect(err.rpcMessage).toContain('reconcile cancelled');
    expect(client.pending).toBe(0);
  });

  it('rejects at once when the signal is already aborted, sending nothing', async () => {
    const err = await rejection(api.spdkGetVersion({ signal: AbortSignal.abort() }));
    expect(err.context.cancelled).toBe(true);
    expect(fake.received).toHaveLength(0);
  });
});

describe('errors from recorded replies', () => {
  const entries = loadTranscript().filter((e) => e.request && e.response?.error);

  it('maps every recorded error reply to an SpdkError with SPDK code, message and kind', async () => {
    fake.handler = (req) => {
      const hit = entries.find((e) => sameParams(e.request!, req));
      return hit?.response?.error ? { error: hit.response.error } : undefined;
    };
    const kinds = new Set<SpdkErrorKind>();
    for (const e of entries) {
      const { method, params } = e.request!;
      const err = await rejection(client.call(method, params));
      const recordedError = e.response!.error!;
      expect(err.method).toBe(method);
      expect(err.code).toBe(recordedError.code);
      expect(err.rpcMessage).toBe(recordedError.message);
      expect(err.kind).toBe(classifySpdkError(recordedError.code, recordedError.message));
      kinds.add(err.kind);
    }
    expect([...kinds].sort()).toEqual(['exists', 'internal', 'invalidParams', 'methodNotFound', 'noSpace', 'notFound', 'notPermitted', 'timeout']);
  });
});

describe('refused locally', () => {
  it('refuses a request over 32 KiB, naming the size, and sends nothing', async () => {
    const err = await rejection(client.call('bdev_get_bdevs', { name: 'x'.repeat(40_000) }));
    expect(err.kind).toBe('invalidParams');
    expect(err.rpcMessage).toMatch(/request is \d+ bytes, over SPDK's limit of 32768 bytes/);
    expect(err.context.bytes).toBeGreaterThan(MAX_REQUEST_BYTES);
    expect(fake.received).toHaveLength(0);
    await expect(api.spdkGetVersion()).resolves.toMatchObject({ version: 'SPDK v24.01' });
  });

  it('sends a request of exactly the limit', async () => {
    const overhead = JSON.stringify({ jsonrpc: '2.0', method: 'bdev_get_bdevs', id: 1, params: { name: '' } }).length;
    fake.handler = () => ({ result: [] });
    // The first call of this client has id 1, so the request is exactly MAX_REQUEST_BYTES long.
    await expect(client.call('bdev_get_bdevs', { name: 'x'.repeat(MAX_REQUEST_BYTES - overhead) })).resolves.toEqual([]);
    expect(fake.received[0]?.raw.length).toBe(MAX_REQUEST_BYTES);
  });

  it('catches a misspelt param before SPDK answers "spdk_json_decode_object failed"', async () => {
    const typo = { num_blocks: 8, block_size: 512, nmae: 'Malloc9' } as unknown as Parameters<SpdkApi['bdevMallocCreate']>[0];
    const err = await rejection(api.bdevMallocCreate(typo));
    expect(err.kind).toBe('invalidParams');
    expect(err.rpcMessage).toContain('nmae');
    expect(fake.received).toHaveLength(0);
  });

  it('names a missing required param', async () => {
    const missing = { block_size: 512 } as unknown as Parameters<SpdkApi['bdevMallocCreate']>[0];
    const err = await rejection(api.bdevMallocCreate(missing));
    expect(err.rpcMessage).toContain('params.num_blocks');
  });

  it('requires exactly one lvstore selector for bdev_lvol_create', async () => {
    const err = await rejection(api.bdevLvolCreate({ lvol_name: 'a', size_in_mib: 1 }));
    expect(err.rpcMessage).toContain('exactly one of uuid and lvs_name');
  });
});

describe('malformed replies', () => {
  it('a result that does not match its schema fails with kind internal naming the field', async () => {
    fake.handler = () => ({ result: [{ name: 5, product_name: 'x', block_size: 512, num_blocks: 1 }] });
    const err = await rejection(api.bdevGetBdevs());
    expect(err.kind).toBe('internal');
    expect(err.method).toBe('bdev_get_bdevs');
    expect(err.rpcMessage).toContain('result.0.name');
  });

  it('a reply with neither result nor error fails that call with kind internal', async () => {
    fake.handler = (req) => ({ raw: JSON.stringify({ jsonrpc: '2.0', id: req.id }) + '\n' });
    const err = await rejection(api.spdkGetVersion());
    expect(err.kind).toBe('internal');
    expect(err.rpcMessage).toContain('neither result nor error');
    fake.handler = undefined;
    await expect(api.spdkGetVersion()).resolves.toBeDefined();
  });

  it('unparseable bytes reset the connection and fail every call in flight with transport', async () => {
    fake.hold = true;
    const inFlight = [rejection(api.spdkGetVersion()), rejection(api.bdevGetBdevs())];
    await fake.waitForRequests(2);
    const disconnected = once(client, 'disconnected');
    const reconnected = once(client, 'connected');
    fake.sendRawToAll('<html>not json</html>\n');
    for (const p of inFlight) {
      const err = await p;
      expect(err.kind).toBe('transport');
      expect(err.rpcMessage).toMatch(/malformed reply/);
    }
    await disconnected;
    await reconnected;
    fake.hold = false;
    await expect(api.spdkGetVersion()).resolves.toMatchObject({ version: 'SPDK v24.01' });
  });

  it('drops a reply whose id matches no call', async () => {
    fake.sendRawToAll('{"jsonrpc":"2.0","id":99999,"result":true}\n{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request"}}\n');
    await expect(api.spdkGetVersion()).resolves.toBeDefined();
    expect(client.connected).toBe(true);
  });
});

describe('connection loss', () => {
  it('fails calls in flight with transport, then reconnects and later calls succeed', async () => {
    fake.hold = true;
    const inFlight = rejection(api.spdkGetVersion());
    await fake.waitForRequests(1);
    const disconnected = once(client, 'disconnected');
    fake.closeConnections();
    const err = await inFlight;
    expect(err.kind).toBe('transport');
    await disconnected;
    fake.hold = false;
    // Made while (possibly) disconnected: waits for the reconnect instead of failing.
    await expect(api.spdkGetVersion()).resolves.toMatchObject({ version: 'SPDK v24.01' });
    expect(client.connected).toBe(true);
  });

  it('with reconnect off, fails fast with transport when nothing listens', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'nc-'));
    const lonely = new SpdkRpcClient({ socketPath: path.join(dir, 'none.sock'), reconnect: false });
    try {
      const err = await rejection(lonely.call('spdk_get_version'));
      expect(err.kind).toBe('transport');
      expect(err.rpcMessage).toContain('none.sock');
      const again = await rejection(lonely.call('spdk_get_version'));
      expect(again.kind).toBe('transport');
    } finally {
      await lonely.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('with reconnect on, a call made while nothing listens times out naming the socket', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'nc-'));
    const waiting = new SpdkRpcClient({ socketPath: path.join(dir, 'none.sock'), reconnect: { initialDelayMs: 5, maxDelayMs: 20 } });
    try {
      const err = await rejection(waiting.call('spdk_get_version', undefined, { timeoutMs: 100 }));
      expect(err.kind).toBe('timeout');
      expect(err.rpcMessage).toContain('not connected');
    } finally {
      await waiting.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('close() fails calls in flight and later calls with transport', async () => {
    fake.hold = true;
    const p = rejection(api.spdkGetVersion());
    await fake.waitForRequests(1);
    await client.close();
    expect((await p).kind).toBe('transport');
    expect((await rejection(api.spdkGetVersion())).kind).toBe('transport');
  });
});
