import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QmpClient, QmpError, type QmpEvent } from '../../../../src/backend/qsd/qmp.js';
import { rejectionOf } from '../../../helpers/validation.js';

const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'test' }, capabilities: ['oob'] } };

interface Command {
  execute: string;
  arguments?: Record<string, unknown>;
  id?: unknown;
}

/**
 * A scripted QMP server: sends the greeting (unless told not to), answers qmp_capabilities,
 * and hands every other command to `handler`, which writes whatever lines it wants.
 */
class FakeQmp {
  server: net.Server;
  sockets: net.Socket[] = [];
  received: Command[] = [];
  constructor(
    readonly socketPath: string,
    private handler: (cmd: Command, send: (line: string | object) => void) => void,
    opts: { greet?: boolean } = {},
  ) {
    this.server = net.createServer((s) => {
      this.sockets.push(s);
      const send = (line: string | object): void => {
        s.write(`${typeof line === 'string' ? line : JSON.stringify(line)}\r\n`);
      };
      if (opts.greet !== false) send(GREETING);
      let buf = '';
      s.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const cmd = JSON.parse(buf.slice(0, nl)) as Command;
          buf = buf.slice(nl + 1);
          this.received.push(cmd);
          if (cmd.execute === 'qmp_capabilities') send({ return: {}, id: cmd.id });
          else this.handler(cmd, send);
        }
      });
    });
  }
  listen(): Promise<void> {
    return new Promise((r) => this.server.listen(this.socketPath, r));
  }
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }
}

let dir: string;
let fake: FakeQmp | undefined;
let client: QmpClient | undefined;

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qmp-'));
});
afterEach(async () => {
  client?.close();
  client = undefined;
  await fake?.close();
  fake = undefined;
  await fs.rm(dir, { recursive: true, force: true });
});

async function start(handler: ConstructorParameters<typeof FakeQmp>[1], opts?: { greet?: boolean }): Promise<string> {
  fake = new FakeQmp(path.join(dir, 'q.sock'), handler, opts);
  await fake.listen();
  return fake.socketPath;
}

const rejection = (p: Promise<unknown>): Promise<QmpError> => rejectionOf(p, QmpError);

describe('QmpClient', () => {
  it('reads the greeting and negotiates capabilities before anything else', async () => {
    const sock = await start((cmd, send) => send({ return: { ok: cmd.execute }, id: cmd.id }));
    client = await QmpClient.connect(sock);
    expect(client.greeting?.version.qemu).toEqual({ major: 7, minor: 2, micro: 22 });
    expect(fake?.received[0]?.execute).toBe('qmp_capabilities');
    expect(await client.execute('query-version')).toEqual({ ok: 'query-version' });
  });

  it('sends arguments and returns the reply value', async () => {
    const sock = await start((cmd, send) => send({ return: cmd.arguments, id: cmd.id }));
    client = await QmpClient.connect(sock);
    const args = { 'node-name': 'n1', addr: { type: 'unix', path: '/x' } };
    expect(await client.execute('blockdev-add', args)).toEqual(args);
    expect(fake?.received[1]).toMatchObject({ execute: 'blockdev-add', arguments: args });
  });

  it('types command errors with QMP class and desc', async () => {
    const sock = await start((cmd, send) =>
      send({ id: cmd.id, error: { class: 'DeviceNotFound', desc: "Failed to find node with node-name='x'" } }),
    );
    client = await QmpClient.connect(sock);
    const err = await rejection(client.execute('blockdev-del', { 'node-name': 'x' }));
    expect(err.kind).toBe('command');
    expect(err.errorClass).toBe('DeviceNotFound');
    expect(err.desc).toBe("Failed to find node with node-name='x'");
    expect(err.command).toBe('blockdev-del');
  });

  it('matches replies by id when they come back out of order', async () => {
    const held: Array<() => void> = [];
    const sock = await start((cmd, send) => {
      held.push(() => send({ return: cmd.execute, id: cmd.id }));
      if (held.length === 3) for (const f of held.reverse()) f();
    });
    client = await QmpClient.connect(sock);
    const results = await Promise.all([client.execute('a'), client.execute('b'), client.execute('c')]);
    expect(results).toEqual(['a', 'b', 'c']);
  });

  it('emits events interleaved with replies and still resolves the command', async () => {
    const sock = await start((cmd, send) => {
      send({ event: 'BLOCK_EXPORT_DELETED', data: { id: 'e1' }, timestamp: { seconds: 1, microseconds: 2 } });
      send({ return: {}, id: cmd.id });
      send({ event: 'JOB_STATUS_CHANGE', data: { id: 'j', status: 'null' }, timestamp: { seconds: 1, microseconds: 3 } });
    });
    client = await QmpClient.connect(sock);
    const events: QmpEvent[] = [];
    client.on('event', (e: QmpEvent) => events.push(e));
    const deleted = client.waitForEvent('BLOCK_EXPORT_DELETED', (e) => e.data?.id === 'e1', 2_000);
    await client.execute('block-export-del', { id: 'e1' });
    expect((await deleted).data).toEqual({ id: 'e1' });
    await client.execute('query-block-exports');
    expect(events.map((e) => e.event)).toContain('JOB_STATUS_CHANGE');
  });

  it('skips malformed and unknown lines and keeps working', async () => {
    const sock = await start((cmd, send) => {
      send('this is not json');
      send('{"half": ');
      send({ something: 'else' });
      send({ return: 42, id: 'nobody-asked' });
      send({ return: 'fine', id: cmd.id });
    });
    client = await QmpClient.connect(sock);
    expect(await client.execute('query-status')).toBe('fine');
    expect(await client.execute('query-status')).toBe('fine');
  });

  it('gives an id-less error reply to the oldest waiting command', async () => {
    // QEMU replies without an id when it could not parse the request at all.
    const sock = await start((_cmd, send) => send({ error: { class: 'GenericError', desc: 'JSON parse error' } }));
    client = await QmpClient.connect(sock);
    const err = await rejection(client.execute('broken'));
    expect(err).toMatchObject({ kind: 'command', errorClass: 'GenericError', command: 'broken' });
  });

  it('times out a command that gets no reply, and the connection stays usable', async () => {
    const sock = await start((cmd, send) => {
      if (cmd.execute !== 'hang') send({ return: 'ok', id: cmd.id });
    });
    client = await QmpClient.connect(sock);
    const err = await rejection(client.execute('hang', undefined, { timeoutMs: 100 }));
    expect(err.kind).toBe('timeout');
    expect(await client.execute('query-version')).toBe('ok');
  });

  it('times out a server that never greets', async () => {
    const sock = await start(() => undefined, { greet: false });
    const err = await rejection(QmpClient.connect(sock, { timeoutMs: 150 }));
    expect(err.kind).toBe('timeout');
    expect(err.message).toMatch(/no QMP greeting/);
  });

  it('fails to connect to a missing socket with a closed error', async () => {
    const err = await rejection(QmpClient.connect(path.join(dir, 'none.sock'), { timeoutMs: 500 }));
    expect(err.kind).toBe('closed');
    expect(err.message).toMatch(/ENOENT/);
  });

  it('rejects pending commands and emits close when the server goes away', async () => {
    const sock = await start(() => {
      for (const s of fake?.sockets ?? []) s.destroy();
    });
    client = await QmpClient.connect(sock);
    const closed = new Promise<unknown>((r) => client?.once('close', r));
    const err = await rejection(client.execute('query-version'));
    expect(err.kind).toBe('closed');
    expect(await closed).toBeInstanceOf(QmpError);
    expect(client.isClosed).toBe(true);
    expect((await rejection(client.execute('again'))).kind).toBe('closed');
  });

  it('handles a reply split across several writes', async () => {
    const sock = await start((cmd) => {
      const text = `${JSON.stringify({ return: { long: 'x'.repeat(10_000) }, id: cmd.id })}\r\n`;
      const s = fake?.sockets[0];
      s?.write(text.slice(0, 7));
      setTimeout(() => s?.write(text.slice(7, 5000)), 10);
      setTimeout(() => s?.write(text.slice(5000)), 20);
    });
    client = await QmpClient.connect(sock);
    expect(await client.execute('big')).toEqual({ long: 'x'.repeat(10_000) });
  });
});
