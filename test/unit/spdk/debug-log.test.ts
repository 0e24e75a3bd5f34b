import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { Logger } from '../../../src/log.js';
import { SpdkRpcClient } from '../../../src/spdk/client.js';
import { FakeSpdk } from '../../helpers/fake-spdk.js';

let fake: FakeSpdk | undefined;
let client: SpdkRpcClient | undefined;
afterEach(async () => {
  await client?.close();
  await fake?.stop();
  client = undefined;
  fake = undefined;
});

function captured(level: string): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: pino({ level }, sink), lines };
}

describe('SpdkRpcClient at debug level', () => {
  it('logs every request and its reply (method, params, duration, result or error), one JSON line each', async () => {
    fake = await FakeSpdk.start();
    fake.handler = (req) => (req.method === 'bdev_get_bdevs' ? { error: { code: -19, message: 'No such device' } } : undefined);
    const { logger, lines } = captured('debug');
    client = new SpdkRpcClient({ socketPath: fake.socketPath, logger });
    await client.call('spdk_get_version');
    await expect(client.call('bdev_get_bdevs', { name: 'nope' })).rejects.toThrow(/No such device/);
    const rpcs = lines.filter((l) => l.event === 'rpc');
    expect(rpcs).toEqual([
      expect.objectContaining({ method: 'spdk_get_version', ms: expect.any(Number), result: expect.objectContaining({ version: expect.stringMatching(/SPDK/) }) }),
      expect.objectContaining({ method: 'bdev_get_bdevs', params: { name: 'nope' }, ms: expect.any(Number), error: { code: -19, message: 'No such device', kind: 'notFound' } }),
    ]);
  });

  it('logs no RPC lines at info level', async () => {
    fake = await FakeSpdk.start();
    const { logger, lines } = captured('info');
    client = new SpdkRpcClient({ socketPath: fake.socketPath, logger });
    await client.call('spdk_get_version');
    expect(lines.filter((l) => l.event === 'rpc')).toEqual([]);
  });
});
