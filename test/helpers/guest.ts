/**
 * The test guest (hack/guest): where its kernel and initramfs are, how to drive its /init from
 * the kernel command line, and a reader for its serial console (a unix socket that QEMU
 * listens on) that waits for the `KS: ` lines the init prints.
 */
import { execFile } from 'node:child_process';
import net from 'node:net';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from './cli.js';

const exec = promisify(execFile);

export const GUEST_DIR = path.join(REPO_ROOT, '.cache', 'guest');
export const GUEST_KERNEL = path.join(GUEST_DIR, 'vmlinuz');
export const GUEST_INITRD = path.join(GUEST_DIR, 'initramfs.gz');
const BUILD_SCRIPT = path.join(REPO_ROOT, 'hack', 'guest', 'build-guest.sh');

/** Builds the guest if needed (fast when it is up to date). */
export async function ensureGuestBuilt(): Promise<{ kernel: string; initrd: string }> {
  await exec('bash', [BUILD_SCRIPT], { timeout: 300_000 });
  return { kernel: GUEST_KERNEL, initrd: GUEST_INITRD };
}

export interface GuestRun {
  /** `e2e`: golden marker, own marker, sequence, verify; `shell`: a shell on the console. */
  mode?: 'e2e' | 'shell';
  /** Sequence records to write; 0 = until `stop` is sent on the console. */
  seq?: number;
  /** The guest's own marker text (no spaces). */
  tag?: string;
  disk?: string;
}

export function guestCmdline(run: GuestRun = {}): string {
  const tag = run.tag ?? 'guest';
  if (!/^[A-Za-z0-9._-]+$/.test(tag)) throw new Error(`guest tag "${tag}" must match [A-Za-z0-9._-]+ (it is a kernel argument)`);
  const parts = ['console=ttyS0', 'quiet', 'panic=-1', `ks.mode=${run.mode ?? 'e2e'}`, `ks.seq=${run.seq ?? 0}`, `ks.tag=${tag}`];
  if (run.disk) parts.push(`ks.disk=${run.disk}`);
  return parts.join(' ');
}

/** One line the guest's /init printed for tests (`KS: WORD rest...`). */
export interface KsEvent {
  word: string;
  rest: string;
  line: string;
  /** When the host read the line (ms since the epoch); set by GuestConsole. */
  at?: number;
}

const KS_LINE = /^KS: (\S+)(?: (.*))?$/;

/** Parses one console line; undefined for anything that is not ours (kernel, firmware). */
export function parseKsLine(line: string): KsEvent | undefined {
  // Firmware escape sequences may precede the first line.
  const at = line.indexOf('KS: ');
  if (at < 0) return undefined;
  const m = KS_LINE.exec(line.slice(at).replace(/\r$/, ''));
  if (!m) return undefined;
  return { word: m[1] as string, rest: m[2] ?? '', line: line.slice(at).replace(/\r$/, '') };
}

export class GuestConsoleError extends Error {
  override readonly name = 'GuestConsoleError';
  constructor(message: string, readonly transcript: string) {
    super(`${message}\n--- guest console (last lines) ---\n${transcript.split('\n').slice(-30).join('\n')}`);
  }
}

type Waiter = { pred: (e: KsEvent) => boolean; resolve: (e: KsEvent) => void; reject: (e: Error) => void; timer: NodeJS.Timeout; what: string };

/**
 * Reads the guest's serial console. Events are kept in order; `waitFor` resolves with the
 * first event after the read cursor that matches, and moves the cursor past it, so a test
 * reads the console like a script: boot, then golden, then marker, ...
 */
export class GuestConsole {
  readonly events: KsEvent[] = [];
  private cursor = 0;
  private text = '';
  private partial = '';
  private waiters: Waiter[] = [];
  private closed = false;

  /** Without a socket the console only parses what `feed` gets (unit tests). */
  constructor(private readonly socket?: net.Socket) {
    if (!socket) return;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.feed(chunk));
    socket.on('close', () => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) {
        clearTimeout(w.timer);
        w.reject(new GuestConsoleError(`console closed while waiting for ${w.what}`, this.text));
      }
    });
    socket.on('error', () => {
      // 'close' follows and rejects the waiters.
    });
  }

  /** Connects to the console socket, retrying while QEMU has not created it yet. */
  static async connect(socketPath: string, timeoutMs = 15_000): Promise<GuestConsole> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.createConnection(socketPath);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        return new GuestConsole(socket);
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`guest console ${socketPath}: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** Everything the console printed so far. */
  transcript(): string {
    return this.text;
  }

  /** Feeds raw console output; public so the parser can be tested without a VM. */
  feed(chunk: string): void {
    this.text += chunk;
    const lines = (this.partial + chunk).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) {
      const ev = parseKsLine(line);
      if (ev) this.events.push({ ...ev, at: Date.now() });
    }
    this.settle();
  }

  /**
   * The next event (after the cursor) whose word is `word` and whose rest matches `rest`.
   * A `FAIL` event from the guest rejects at once: waiting longer cannot help.
   */
  waitFor(word: string, timeoutMs: number, rest?: RegExp | ((rest: string) => boolean)): Promise<KsEvent> {
    const what = `"KS: ${word}${rest ? ` ${rest instanceof RegExp ? rest.source : '<predicate>'}` : ''}"`;
    const restOk = (r: string) => rest === undefined || (rest instanceof RegExp ? rest.test(r) : rest(r));
    return new Promise<KsEvent>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new GuestConsoleError(`no ${what} within ${timeoutMs} ms`, this.text));
      }, timeoutMs);
      const waiter: Waiter = { pred: (e) => e.word === word && restOk(e.rest), resolve, reject, timer, what };
      this.waiters.push(waiter);
      this.settle();
      if (this.closed && this.waiters.includes(waiter)) {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new GuestConsoleError(`console closed while waiting for ${what}`, this.text));
      }
    });
  }

  /** Types a line on the guest's console (the init reads `stop`). */
  send(line: string): void {
    if (!this.socket) throw new Error('guest console: not connected');
    this.socket.write(`${line}\n`);
  }

  /**
   * Ends the guest's write loop (ks.seq=0) and resolves with its STOPPED event. The line is
   * sent again every 2 s: the guest polls the console with a short read timeout, and on a slow
   * (loaded, TCG) guest a line arriving in pieces can be cut by that timeout and lost.
   */
  async stopWriting(timeoutMs = 60_000): Promise<KsEvent> {
    const stopped = this.waitFor('STOPPED', timeoutMs);
    this.send('stop');
    const again = setInterval(() => this.send('stop'), 2_000);
    try {
      return await stopped;
    } finally {
      clearInterval(again);
    }
  }

  close(): void {
    this.socket?.destroy();
  }

  private settle(): void {
    // One waiter at a time, in the order they were registered, keeps the cursor meaningful.
    while (this.waiters.length) {
      const w = this.waiters[0] as Waiter;
      let hit: KsEvent | undefined;
      while (this.cursor < this.events.length) {
        const ev = this.events[this.cursor++] as KsEvent;
        if (ev.word === 'FAIL') {
          this.waiters.shift();
          clearTimeout(w.timer);
          w.reject(new GuestConsoleError(`guest failed: ${ev.line} (while waiting for ${w.what})`, this.text));
          hit = undefined;
          break;
        }
        if (w.pred(ev)) {
          hit = ev;
          break;
        }
      }
      if (hit) {
        this.waiters.shift();
        clearTimeout(w.timer);
        w.resolve(hit);
      } else if (this.waiters[0] === w) {
        return;
      }
    }
  }
}

/** The e2e domain template (test/fixtures/e2e/domain.xml) with every {{KEY}} filled. */
function fillTemplate(template: string, values: Record<string, string>): string {
  return template.replace(/\{\{([A-Z_]+)\}\}/g, (whole, key: string) => {
    const v = values[key];
    if (v === undefined) throw new Error(`domain template: no value for ${whole}`);
    return v;
  });
}

/**
 * The libvirt domain a KubeVirt-like launcher would define for `vmi`, before our rewrite: own
 * copies of the guest's kernel and initrd in `dir` (libvirt relabels what it boots; the shared
 * cache stays untouched), the console on a socket in `dir`, the guest writing until "stop".
 */
export async function e2eDomain(
  dir: string,
  vmi: { metadata: { namespace: string; name: string; uid?: string | undefined } },
  guest: { kernel: string; initrd: string },
  tag: string,
): Promise<{ name: string; consoleSocket: string; template: string }> {
  const kernel = path.join(dir, 'vmlinuz');
  const initrd = path.join(dir, 'initramfs.gz');
  await fs.copyFile(guest.kernel, kernel);
  await fs.copyFile(guest.initrd, initrd);
  const name = `${vmi.metadata.namespace}_${vmi.metadata.name}`;
  const consoleSocket = path.join(dir, 'console.sock');
  const template = fillTemplate(await fs.readFile(path.join(REPO_ROOT, 'test', 'fixtures', 'e2e', 'domain.xml'), 'utf8'), {
    NAME: name,
    UID: vmi.metadata.uid ?? 'none',
    KERNEL: kernel,
    INITRD: initrd,
    CMDLINE: guestCmdline({ mode: 'e2e', seq: 0, tag }),
    CONSOLE_SOCKET: consoleSocket,
    CONSOLE_LOG: path.join(dir, 'console.log'),
  });
  return { name, consoleSocket, template };
}
