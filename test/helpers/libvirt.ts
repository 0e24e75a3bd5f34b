/**
 * The system libvirt for tests that boot a real VM: start virtlogd/libvirtd when they are not
 * running (and stop only what we started), define/start/destroy/undefine domains with virsh.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';

const exec = promisify(execFile);
export const LIBVIRT_URI = 'qemu:///system';

export class VirshError extends Error {
  override readonly name = 'VirshError';
  constructor(
    readonly args: string[],
    readonly stderr: string,
  ) {
    super(`virsh ${args.join(' ')}: ${stderr.trim()}`);
  }
}

export async function virsh(...args: string[]): Promise<string> {
  try {
    const { stdout } = await exec('virsh', ['-c', LIBVIRT_URI, ...args], { timeout: 60_000 });
    return stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new VirshError(args, err.stderr || err.message);
  }
}

async function onPath(cmd: string): Promise<boolean> {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin']);
  for (const d of dirs) {
    if (!d) continue;
    const ok = await fs.access(path.join(d, cmd), fs.constants.X_OK).then(
      () => true,
      () => false,
    );
    if (ok) return true;
  }
  return false;
}

/**
 * Why a real-VM test cannot run here, or undefined when it can: the system libvirtd needs
 * root, and the test needs libvirt, QEMU and qemu-storage-daemon installed (`make deps`).
 */
export async function whyNoLibvirt(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'not root (the system libvirtd and socket ownership need root)';
  for (const cmd of ['libvirtd', 'virtlogd', 'virsh', 'qemu-system-x86_64', 'qemu-storage-daemon', 'qemu-img']) {
    if (!(await onPath(cmd))) return `${cmd} is not installed (run make deps)`;
  }
  return undefined;
}

async function libvirtAnswers(): Promise<boolean> {
  return virsh('version').then(
    () => true,
    () => false,
  );
}

/** Handle on the libvirt daemons; `stop()` ends only the ones this handle started. */
export interface LibvirtDaemons {
  startedHere: boolean;
  stop(): Promise<void>;
}

async function waitFor(cond: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/**
 * Makes sure the system libvirtd answers. Machines without systemd (containers, CI) have
 * the daemons installed but not running: we start them in the foreground as our children so
 * that we know exactly which processes to stop.
 */
function socketAnswers(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(p);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export async function ensureLibvirt(): Promise<LibvirtDaemons> {
  if ((await libvirtAnswers()) && (await socketAnswers('/run/libvirt/virtlogd-sock'))) return { startedHere: false, stop: async () => {} };
  const started: ChildProcess[] = [];
  const startDaemon = (cmd: string) => {
    const child = spawn(cmd, [], { stdio: 'ignore' });
    child.on('error', () => {
      // Reported by the readiness wait below.
    });
    started.push(child);
  };
  // A socket file left by a virtlogd that died answers nothing: connect, do not just look.
  const virtlogdUp = await socketAnswers('/run/libvirt/virtlogd-sock');
  if (!virtlogdUp) startDaemon('virtlogd');
  startDaemon('libvirtd');
  try {
    await waitFor(libvirtAnswers, 30_000, 'libvirtd to answer');
  } catch (e) {
    await Promise.all(started.map(stopChild));
    throw e;
  }
  return {
    startedHere: true,
    async stop() {
      // Another test file may still have a domain on this libvirtd: then leave it running.
      const left = (await virsh('list', '--all', '--name').catch(() => '')).trim();
      if (left) return;
      for (const child of started.reverse()) await stopChild(child);
    },
  };
}

export type DomainState = 'running' | 'shut off' | 'paused' | 'missing' | string;

export async function domainState(name: string): Promise<DomainState> {
  try {
    return (await virsh('domstate', name)).trim();
  } catch (e) {
    if (e instanceof VirshError && /failed to get domain|Domain not found/i.test(e.stderr)) return 'missing';
    throw e;
  }
}

/** Defines and starts a domain from XML; the XML file stays next to the test's other files. */
export async function defineAndStart(xml: string, xmlFile: string, name: string): Promise<void> {
  await fs.writeFile(xmlFile, xml);
  await virsh('define', xmlFile);
  await virsh('start', name);
}

/** Destroys (if running) and undefines a domain; missing domains are fine. */
export async function destroyAndUndefine(name: string): Promise<void> {
  const state = await domainState(name);
  if (state === 'missing') return;
  if (state !== 'shut off') await virsh('destroy', name).catch(() => '');
  await virsh('undefine', name).catch(() => '');
}

/** Waits until the domain is no longer running (the guest powered off). */
export async function waitShutOff(name: string, timeoutMs: number): Promise<void> {
  await waitFor(async () => {
    const s = await domainState(name);
    return s === 'shut off' || s === 'missing';
  }, timeoutMs, `domain ${name} to power off`);
}

/** Validates a domain XML against libvirt's schema; returns the validator's message on error. */
export async function validateDomainXml(xmlFile: string): Promise<string | undefined> {
  try {
    await exec('virt-xml-validate', [xmlFile, 'domain']);
    return undefined;
  } catch (e) {
    const err = e as { stderr?: string; stdout?: string; message: string };
    return (err.stderr || err.stdout || err.message).trim();
  }
}
