/**
 * qemu-storage-daemon as a real vhost-user-blk backend for tests: golden raw image -> qcow2
 * overlay (the clone) -> vhost-user-blk export on a unix socket that libvirt's QEMU can open.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import fs from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import path from 'node:path';

const exec = promisify(execFile);

/** The product's socket contract: QEMU in virt-launcher runs as uid/gid 107 (kvm on Debian). */
export const QEMU_SOCKET_OWNER = { uid: 107, gid: 107, mode: 0o660 } as const;

export interface QsdOptions {
  /** The disk image to export (the per-VM clone). */
  image: string;
  format: 'raw' | 'qcow2';
  socketPath: string;
  /** chown/chmod applied to the socket once it exists; default QEMU_SOCKET_OWNER. */
  owner?: { uid: number; gid: number; mode: number };
  /** How long to wait for the socket to appear. */
  startTimeoutMs?: number;
}

export class QsdError extends Error {
  override readonly name = 'QsdError';
  constructor(
    message: string,
    readonly context: { socketPath: string; image: string; stderr?: string },
  ) {
    super(`${message} (image ${context.image}, socket ${context.socketPath})${context.stderr ? `: ${context.stderr.trim()}` : ''}`);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function exists(p: string): Promise<boolean> {
  return fs.stat(p).then(
    () => true,
    () => false,
  );
}

/** One qemu-storage-daemon process exporting one image; `restart()` reuses socket and image. */
export class QsdProcess {
  private child: ChildProcess | undefined;
  private stderr = '';

  constructor(readonly options: QsdOptions) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  async start(): Promise<void> {
    if (this.running) throw new QsdError('already running', this.ctx());
    const { image, format, socketPath } = this.options;
    // A stale socket of a killed instance would make the export fail with EADDRINUSE.
    await fs.rm(socketPath, { force: true });
    this.stderr = '';
    // writethrough=on: the export shows the guest a write-through disk, so the guest never
    // flushes; without it qcow2 metadata stays in the daemon's memory and a SIGKILL loses
    // writes the guest saw complete (the restart test catches exactly that).
    const args = [
      '--blockdev', `driver=file,node-name=file0,filename=${image}`,
      '--blockdev', `driver=${format},node-name=disk0,file=file0`,
      '--export', `type=vhost-user-blk,id=export0,node-name=disk0,addr.type=unix,addr.path=${socketPath},writable=on,writethrough=on`,
    ];
    const child = spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    child.stderr?.on('data', (b: Buffer) => {
      this.stderr = (this.stderr + b.toString()).slice(-4000);
    });
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
    const deadline = Date.now() + (this.options.startTimeoutMs ?? 10_000);
    for (;;) {
      if (await exists(socketPath)) break;
      const err = await Promise.race([spawnError, sleep(20).then(() => undefined)]);
      if (err) throw new QsdError(`cannot start qemu-storage-daemon: ${err.message}`, this.ctx());
      if (!this.running) throw new QsdError(`qemu-storage-daemon exited (${child.exitCode ?? child.signalCode})`, this.ctx());
      if (Date.now() > deadline) {
        await this.kill();
        throw new QsdError('socket did not appear in time', this.ctx());
      }
    }
    const owner = this.options.owner ?? QEMU_SOCKET_OWNER;
    await fs.chown(socketPath, owner.uid, owner.gid);
    await fs.chmod(socketPath, owner.mode);
  }

  /** Sends `signal` and waits for the exit. SIGKILL is what a crashing backend looks like. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill(signal);
    await exited;
  }

  async restart(): Promise<void> {
    await this.kill('SIGKILL');
    await this.start();
  }

  private ctx() {
    return { socketPath: this.options.socketPath, image: this.options.image, stderr: this.stderr };
  }
}

/** A sparse raw image whose first sector holds `marker` (one line), the rest zeros. */
export async function createGoldenImage(file: string, sizeBytes: number, marker: string): Promise<void> {
  const fh = await fs.open(file, 'w');
  try {
    await fh.truncate(sizeBytes);
    await fh.write(Buffer.from(`${marker}\n`), 0, undefined, 0);
  } finally {
    await fh.close();
  }
}

/** The per-VM clone: a qcow2 overlay whose reads fall through to the golden image. */
export async function createOverlay(golden: string, overlay: string): Promise<void> {
  await exec('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', path.resolve(golden), '-F', 'raw', overlay]);
}

/** Bytes of the disk as the guest sees it (overlay plus backing), read with qemu-img. */
export async function readDiskBytes(image: string, offset: number, length: number, scratchDir: string): Promise<Buffer> {
  const raw = path.join(scratchDir, `read-${process.pid}-${Date.now()}.raw`);
  try {
    await exec('qemu-img', ['convert', '-U', '-O', 'raw', image, raw]);
    const fh = await fs.open(raw, 'r');
    try {
      const buf = Buffer.alloc(length);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      return buf.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  } finally {
    await fs.rm(raw, { force: true });
  }
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
