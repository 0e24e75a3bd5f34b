import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { QsdBackend } from '../../src/backend/qsd/index.js';
import { hasCommand } from '../helpers/process.js';

/**
 * health().instance names the qemu-storage-daemon process: a new connection to the same daemon
 * (a transient drop of QMP) finds the same name, a new daemon gets a new one. This is what lets
 * a migration survive a reconnect and be cancelled by a restart.
 */

const missing = !hasCommand('qemu-storage-daemon');
let dir: string | undefined;
const daemons: ChildProcess[] = [];

afterEach(async () => {
  for (const d of daemons.splice(0)) d.kill('SIGKILL');
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function daemon(qmp: string): Promise<ChildProcess> {
  await rm(qmp, { force: true });
  const p = spawn('qemu-storage-daemon', ['--chardev', `socket,path=${qmp},server=on,wait=off,id=m`, '--monitor', 'chardev=m'], { stdio: 'ignore' });
  daemons.push(p);
  // The socket appears once the daemon listens.
  for (let i = 0; i < 200; i++) {
    if (await stat(qmp).then(() => true, () => false)) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  return p;
}

describe.skipIf(missing)('qsd backend instance', () => {
  it('is kept by a reconnect to the same daemon and changes with a new daemon', async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'qin-'));
    const qmpSocket = path.join(dir, 'qmp.sock');
    const first = await daemon(qmpSocket);
    const open = async (): Promise<QsdBackend> => {
      const b = new QsdBackend({ stateDir: path.join(dir ?? '', 'st'), vhostDir: path.join(dir ?? '', 'vh'), managed: false, qmpSocket, restartDelayMs: 50 });
      await b.start();
      return b;
    };
    const b1 = await open();
    const h1 = await b1.health();
    expect(h1.ok).toBe(true);
    expect(h1.instance).toMatch(/^[0-9a-f]{16}$/);
    await b1.close();
    const b2 = await open();
    expect((await b2.health()).instance).toBe(h1.instance);
    await b2.close();

    first.kill('SIGKILL');
    await new Promise((r) => first.once('exit', r));
    await daemon(qmpSocket);
    const b3 = await open();
    const h3 = await b3.health();
    expect(h3.instance).toBeDefined();
    expect(h3.instance).not.toBe(h1.instance);
    await b3.close();
  }, 30_000);
});
