import { afterEach, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ManualHealth, SocketProbeHealth } from '../../../deviceplugin/health.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('health sources', () => {
  it('ManualHealth notifies only on a real change', () => {
    const h = new ManualHealth(true);
    let calls = 0;
    const off = h.onChange(() => calls++);
    h.set(true);
    h.set(false);
    h.set(false);
    off();
    h.set(true);
    expect(calls).toBe(1);
    expect(h.healthy()).toBe(true);
  });

  it('SocketProbeHealth follows whether the backend socket accepts connections', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'hp-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const sock = path.join(dir, 'rpc.sock');
    const h = new SocketProbeHealth(sock, 60_000);
    cleanups.push(() => h.close());
    expect(await h.probe()).toBe(false);
    const server = net.createServer((c) => c.destroy());
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    let changes = 0;
    h.onChange(() => changes++);
    expect(await h.probe()).toBe(true);
    expect(h.healthy()).toBe(true);
    await new Promise<void>((resolve) => server.close(() => resolve()));
    expect(await h.probe()).toBe(false);
    expect(changes).toBe(2);
  });
});
