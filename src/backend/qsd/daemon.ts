import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import { silentLogger, type Logger } from '../../log.js';

/**
 * One qemu-storage-daemon process with a QMP monitor on a unix socket. The backend decides
 * when to restart it; this class only starts, stops and reports the exit ('exit' event).
 */
export interface QsdProcessOptions {
  binary: string;
  qmpSocket: string;
  pidFile: string;
  logger?: Logger;
}

export class QsdProcess extends EventEmitter {
  private child: ChildProcess | undefined;
  /** Set by stop(): a start() still in its preparations must not spawn afterwards. */
  private stopped = false;
  private readonly log: Logger;

  constructor(private readonly opts: QsdProcessOptions) {
    super();
    this.log = (opts.logger ?? silentLogger).child({ qsd: opts.qmpSocket });
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Spawns the daemon; resolves once its QMP socket exists (connect separately). */
  async start(timeoutMs = 10_000): Promise<void> {
    this.stopped = false;
    await this.killStale();
    await fs.rm(this.opts.qmpSocket, { force: true });
    if (this.stopped) throw new Error('qemu-storage-daemon start cancelled by stop()');
    const argv = [
      '--chardev',
      `socket,id=qmp0,path=${this.opts.qmpSocket},server=on,wait=off`,
      '--monitor',
      'chardev=qmp0,mode=control',
      '--pidfile',
      this.opts.pidFile,
    ];
    const child = spawn(this.opts.binary, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      stderr = (stderr + d).slice(-4096);
      for (const line of d.split('\n')) if (line.trim()) this.log.warn({ event: 'qsd.stderr', line }, 'qemu-storage-daemon');
    });
    const exited = new Promise<string>((resolve) => {
      child.once('error', (err) => resolve(err.message));
      child.once('exit', (code, signal) => resolve(`exited (code ${code}, signal ${signal})`));
    });
    child.once('exit', (code, signal) => {
      if (this.child === child) this.child = undefined;
      this.log.info({ event: 'qsd.exit', pid: child.pid, code, signal }, 'qemu-storage-daemon exited');
      this.emit('exit', { code, signal });
    });
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const ready = await Promise.race([
        fs.stat(this.opts.qmpSocket).then(
          () => true,
          () => false,
        ),
        exited.then((why) => {
          throw new Error(`qemu-storage-daemon ${why}: ${stderr.trim()}`);
        }),
      ]);
      if (ready) break;
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`qemu-storage-daemon did not create ${this.opts.qmpSocket} within ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    this.log.info({ event: 'qsd.started', pid: child.pid }, 'qemu-storage-daemon started');
  }

  /** SIGTERM, then SIGKILL if it does not go within `graceMs`. */
  async stop(graceMs = 3_000): Promise<void> {
    this.stopped = true;
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await gone;
    clearTimeout(timer);
  }

  /**
   * A daemon left running by an earlier agent that crashed still holds the image locks; it
   * is ours if the pid file names a live qemu-storage-daemon started with this very pid file.
   */
  private async killStale(): Promise<void> {
    const pid = Number((await fs.readFile(this.opts.pidFile, 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(pid) || pid <= 1) return;
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    const args = cmdline.split('\0');
    if (!args.some((a) => a.includes('qemu-storage-daemon')) || !args.includes(this.opts.pidFile)) return;
    this.log.warn({ event: 'qsd.stale', pid }, 'killing a stale qemu-storage-daemon from an earlier run');
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      return;
    }
    for (let i = 0; i < 100; i++) {
      if (!(await fs.stat(`/proc/${pid}`).then(() => true, () => false))) return;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}
