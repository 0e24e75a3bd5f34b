/**
 * A plain QEMU (TCG) running the test guest on one vhost-user-blk disk, for the migration
 * e2e test: the same command line on source and target (KubeVirt also starts the target from
 * the source's domain), the target with `-incoming`. Console and QMP are unix sockets.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { QmpClient } from '../../src/backend/qsd/qmp.js';
import { GuestConsole } from '../helpers/guest.js';

export interface VmOptions {
  dir: string;
  name: string;
  kernel: string;
  initrd: string;
  cmdline: string;
  vhostSocket: string;
  /** More vhost-user-blk disks (the guest uses the first one only; benches migrate several). */
  moreSockets?: string[];
  /** `unix:<path>` to wait for an incoming migration. */
  incoming?: string;
}

export class MigratableVm {
  private child: ChildProcess | undefined;
  private stderr = '';
  qmp!: QmpClient;
  console!: GuestConsole;
  readonly qmpPath: string;
  readonly consolePath: string;

  constructor(private readonly o: VmOptions) {
    this.qmpPath = path.join(o.dir, `${o.name}.qmp`);
    this.consolePath = path.join(o.dir, `${o.name}.con`);
  }

  async start(): Promise<void> {
    const argv = [
      '-accel', 'tcg', '-machine', 'q35', '-m', '128', '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none',
      '-object', 'memory-backend-memfd,id=mem,size=128M,share=on', '-numa', 'node,memdev=mem',
      '-chardev', `socket,id=c0,path=${this.o.vhostSocket},reconnect=1`,
      '-device', 'vhost-user-blk-pci,chardev=c0,id=disk0',
      ...(this.o.moreSockets ?? []).flatMap((sock, i) => ['-chardev', `socket,id=c${i + 1},path=${sock},reconnect=1`, '-device', `vhost-user-blk-pci,chardev=c${i + 1},id=disk${i + 1}`]),
      '-chardev', `socket,id=con,path=${this.consolePath},server=on,wait=off`, '-serial', 'chardev:con',
      '-qmp', `unix:${this.qmpPath},server=on,wait=off`,
      '-kernel', this.o.kernel, '-initrd', this.o.initrd, '-append', this.o.cmdline,
      ...(this.o.incoming ? ['-incoming', this.o.incoming] : []),
    ];
    const child = spawn('qemu-system-x86_64', argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    child.stderr?.on('data', (b: Buffer) => {
      this.stderr = (this.stderr + b.toString()).slice(-4000);
    });
    const deadline = Date.now() + 15_000;
    for (;;) {
      try {
        this.qmp = await QmpClient.connect(this.qmpPath, { timeoutMs: 2_000 });
        break;
      } catch (e) {
        if (child.exitCode !== null || Date.now() > deadline) throw new Error(`QEMU ${this.o.name} did not start: ${String(e)}\n${this.stderr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    this.console = await GuestConsole.connect(this.consolePath, 10_000);
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  get log(): string {
    return this.stderr;
  }

  async status(): Promise<string> {
    return ((await this.qmp.execute('query-status')) as { status: string }).status;
  }

  async kill(): Promise<void> {
    this.console?.close();
    this.qmp?.close();
    const child = this.child;
    if (!child || !this.running) return;
    const gone = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGKILL');
    await gone;
  }

  /** Waits for the QEMU process to exit by itself (guest poweroff, or quit). */
  async exited(timeoutMs: number): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    await Promise.race([
      new Promise<void>((r) => child.once('exit', () => r())),
      new Promise<void>((_r, reject) => setTimeout(() => reject(new Error(`QEMU ${this.o.name} did not exit within ${timeoutMs} ms`)), timeoutMs)),
    ]);
  }
}

export interface MigrateResult {
  status: string;
  totalTimeMs?: number;
  downtimeMs?: number;
  error?: string;
}

/** `migrate` and poll `query-migrate` until it is over. */
export async function migrate(src: MigratableVm, uri: string, timeoutMs: number): Promise<MigrateResult> {
  await src.qmp.execute('migrate', { uri });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const q = (await src.qmp.execute('query-migrate')) as { status?: string; 'total-time'?: number; downtime?: number; 'error-desc'?: string };
    if (q.status === 'completed' || q.status === 'failed' || q.status === 'cancelled') {
      return {
        status: q.status,
        ...(q['total-time'] !== undefined ? { totalTimeMs: q['total-time'] } : {}),
        ...(q.downtime !== undefined ? { downtimeMs: q.downtime } : {}),
        ...(q['error-desc'] !== undefined ? { error: q['error-desc'] } : {}),
      };
    }
    if (Date.now() > deadline) throw new Error(`migration still ${q.status} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
