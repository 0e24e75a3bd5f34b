import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { parseAllDocuments } from 'yaml';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ValidationError } from '../../../../src/api/errors.js';
import { NBD_TLS_CLIENT_ID, NBD_TLS_SERVER_ID, NbdTls, loadNbdPsk, pskModeProblem, pskTextProblem } from '../../../../src/backend/qsd/nbd-tls.js';
import { BackendError } from '../../../../src/backend/types.js';
import { parseAgentArgs } from '../../../../src/cli/commands/agent.js';
import { REPO_ROOT } from '../../../helpers/cli.js';
import { rejectionOf } from '../../../helpers/validation.js';

const hex = (bytes = 32): string => randomBytes(bytes).toString('hex');

describe('keys.psk rules (pure)', () => {
  it('takes the first line\'s username for the client; the server file may hold more lines', () => {
    expect(pskTextProblem(`node:${hex()}\n\nold:${hex()}\n`)).toEqual({ username: 'node' });
  });

  it('names the line and the rule, never the text (it is the secret)', () => {
    const k = hex();
    for (const [text, rule] of [
      ['', 'has no `username:hexkey` line'],
      [`${k}\n`, 'line 1 is not `username:hexkey`'],
      [`u:${k}\nu2:${k}zz\n`, 'line 2 is not `username:hexkey`'],
      [`u:${k}0\n`, 'line 1: the key has an odd number of hex digits'],
      [`u:${hex(8)}\n`, 'line 1: the key is shorter than 16 bytes'],
    ] as const) {
      const r = pskTextProblem(text);
      expect(r).toHaveProperty('problem');
      const problem = (r as { problem: string }).problem;
      expect(problem).toContain(rule);
      expect(problem).not.toContain(k);
    }
  });

  it('no permission for others: 0600 and 0640 pass, 0644 / 0606 / 0601 are refused', () => {
    expect(pskModeProblem(0o100600)).toBeUndefined();
    expect(pskModeProblem(0o100640)).toBeUndefined();
    expect(pskModeProblem(0o100400)).toBeUndefined();
    for (const m of [0o100644, 0o100606, 0o100601]) expect(pskModeProblem(m)).toMatch(/must not be world-readable/);
  });
});

describe('loadNbdPsk / NbdTls', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'nbdpsk-'));
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('a directory or its keys.psk is used in place; a file under another name is copied 0600 as keys.psk', async () => {
    const d = path.join(dir, 'secret');
    await fs.mkdir(d);
    await fs.writeFile(path.join(d, 'keys.psk'), `a:${hex()}\n`, { mode: 0o400 });
    expect(await loadNbdPsk(d, path.join(dir, 'copy'))).toEqual({ dir: d, username: 'a' });
    expect(await loadNbdPsk(path.join(d, 'keys.psk'), path.join(dir, 'copy'))).toEqual({ dir: d, username: 'a' });

    const other = path.join(dir, 'cluster.key');
    const text = `b:${hex()}\n`;
    await fs.writeFile(other, text, { mode: 0o600 });
    const copyDir = path.join(dir, 'copy');
    expect(await loadNbdPsk(other, copyDir)).toEqual({ dir: copyDir, username: 'b' });
    expect(await fs.readFile(path.join(copyDir, 'keys.psk'), 'utf8')).toBe(text);
    expect((await fs.stat(path.join(copyDir, 'keys.psk'))).mode & 0o777).toBe(0o600);
    expect((await fs.stat(copyDir)).mode & 0o777).toBe(0o700);
  });

  it('refuses a missing file, a directory without keys.psk, a world-readable file, naming the file', async () => {
    const missing = path.join(dir, 'nope');
    expect((await rejectionOf(loadNbdPsk(missing, dir), BackendError)).message).toMatch(new RegExp(`^NBD PSK file ${missing}: cannot be read`));
    expect((await rejectionOf(loadNbdPsk(dir, path.join(dir, 'c')), BackendError)).message).toContain(`NBD PSK file ${path.join(dir, 'keys.psk')}: cannot be read`);
    const open = path.join(dir, 'open.psk');
    await fs.writeFile(open, `a:${hex()}\n`);
    await fs.chmod(open, 0o644);
    expect((await rejectionOf(loadNbdPsk(open, path.join(dir, 'c')), BackendError)).message).toBe(
      `NBD PSK file ${open}: is accessible by others (mode 0644); it must not be world-readable: chmod 600 it (a Secret volume: defaultMode 0400)`,
    );
  });

  it('without a key: one warning that NBD is unauthenticated, and no TLS arguments; with one: credentials made once per daemon', async () => {
    const lines: string[] = [];
    const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });
    const calls: Array<[string, Record<string, unknown> | undefined]> = [];
    const objects = new Map<string, Record<string, unknown>>();
    const tls = new NbdTls(async (command, args) => {
      calls.push([command, args]);
      if (command === 'qom-get') return objects.get(String(args?.path).replace('/objects/', ''))?.[String(args?.property)];
      const id = String(args?.id);
      // QEMU's answer to a second object-add of an id.
      if (objects.has(id)) throw new BackendError(`object-add: attempt to add duplicate property '${id}' to object (type 'container')`, 'internal');
      objects.set(id, args ?? {});
      return {};
    });
    await tls.load(undefined, dir, log);
    expect(lines.map((l) => JSON.parse(l) as { level: number; event: string })).toMatchObject([{ level: 40, event: 'nbd.unauthenticated' }]);
    expect(await tls.serverArgs()).toEqual({});
    expect(await tls.clientArgs()).toEqual({});
    expect(calls).toEqual([]);

    const key = hex();
    await fs.writeFile(path.join(dir, 'keys.psk'), `me:${key}\n`, { mode: 0o600 });
    await tls.load(dir, path.join(dir, 'c'), log);
    expect(await tls.serverArgs()).toEqual({ 'tls-creds': NBD_TLS_SERVER_ID });
    expect(await tls.clientArgs()).toEqual({ 'tls-creds': NBD_TLS_CLIENT_ID });
    expect(await tls.clientArgs()).toEqual({ 'tls-creds': NBD_TLS_CLIENT_ID });
    const client = { 'qom-type': 'tls-creds-psk', id: NBD_TLS_CLIENT_ID, endpoint: 'client', dir, username: 'me' };
    expect(calls).toEqual([
      ['object-add', { 'qom-type': 'tls-creds-psk', id: NBD_TLS_SERVER_ID, endpoint: 'server', dir }],
      ['object-add', client],
      // The second time the object exists: it is checked to be this configuration's.
      ['object-add', client],
      ['qom-get', { path: `/objects/${NBD_TLS_CLIENT_ID}`, property: 'dir' }],
      ['qom-get', { path: `/objects/${NBD_TLS_CLIENT_ID}`, property: 'username' }],
    ]);
    expect(lines.join('')).not.toContain(key);

    // A daemon that outlived an agent with another key directory: refused, not used.
    const other = path.join(dir, 'other');
    await fs.mkdir(other);
    await fs.writeFile(path.join(other, 'keys.psk'), `me:${hex()}\n`, { mode: 0o600 });
    await tls.load(other, path.join(dir, 'c'), log);
    await expect(tls.serverArgs()).rejects.toThrow(`NBD TLS credentials ${NBD_TLS_SERVER_ID} in qemu-storage-daemon have dir "${dir}", not "${other}": restart the daemon to change the key`);
  });
});

describe('--nbd-psk-file', () => {
  const base = ['--vhost-dir', 'vh', '--state-dir', 'st', '--node', 'n'];
  it('applies to the qsd backend only', () => {
    expect(parseAgentArgs(['--backend', 'qsd', ...base, '--nbd-psk-file', '/etc/psk']).nbdPskFile).toBe('/etc/psk');
    let problems: string[] = [];
    try {
      parseAgentArgs(['--backend', 'spdk', ...base, '--nbd-psk-file', '/etc/psk']);
    } catch (e) {
      if (e instanceof ValidationError) problems = e.problems;
    }
    expect(problems).toEqual(['--nbd-psk-file: only applies with --backend qsd (NBD is the transport of the qsd backend)']);
  });
});

describe('the DaemonSet\'s key volume', () => {
  it('mounts the Secret read-only into the agent with a mode the agent accepts', async () => {
    type Ds = {
      kind: string;
      spec: { template: { spec: { containers: Array<{ name: string; volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }> }>; volumes: Array<{ name: string; secret?: { secretName: string; defaultMode: number; items: Array<{ key: string; path: string }> } }> } } };
    };
    const docs = parseAllDocuments(await fs.readFile(path.join(REPO_ROOT, 'manifests/node/daemonset.yaml'), 'utf8')).map((d) => d.toJS() as Ds);
    const pod = docs.find((d) => d.kind === 'DaemonSet')!.spec.template.spec;
    const vol = pod.volumes.find((v) => v.name === 'nbd-psk')?.secret;
    expect(vol).toMatchObject({ secretName: 'kubevirt-spdk-nbd-psk', items: [{ key: 'keys.psk', path: 'keys.psk' }] });
    expect(pskModeProblem(vol!.defaultMode)).toBeUndefined();
    const agent = pod.containers.find((c) => c.name === 'agent')!;
    expect(agent.volumeMounts).toContainEqual({ name: 'nbd-psk', mountPath: '/etc/kubevirt-spdk/nbd-psk', readOnly: true });
  });
});
