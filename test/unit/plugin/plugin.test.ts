import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkPluginSocketPath, checkSocketPath, DEFAULT_PLUGIN_SOCKET, PLUGIN_NAME, startPluginServer, type PluginServer } from '../../../src/plugin/server.js';
import { startSidecar } from '../../../src/sidecar/server.js';
import { convertDomain } from '../../../src/converter/index.js';
import { parseVmi } from '../../../src/api/vmi.js';
import { VirtLauncherPluginHook } from './plugin-client.js';
import { VirtLauncherHooks, rejection } from '../sidecar/hook-client.js';

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../fixtures/converter');
const DOMAIN = readFileSync(path.join(FIXTURES, 'kubevirt-q35.xml'));
const GOLDEN = readFileSync(path.join(FIXTURES, 'golden/kubevirt-q35.xml'), 'utf8');
const VMI = parseYaml(readFileSync(path.join(FIXTURES, 'vmi-fedora.yaml'), 'utf8')) as { metadata: { annotations: Record<string, string> } };
const vmiJson = (vmi: unknown): Buffer => Buffer.from(JSON.stringify(vmi));

describe('plugin domain hook (VEP 190 MutateDomain) over a unix socket', () => {
  let base: string;
  let server: PluginServer;
  let launcher: VirtLauncherPluginHook;

  beforeAll(async () => {
    base = await mkdtemp(path.join(os.tmpdir(), 'kvp-'));
    const socketPath = path.join(base, PLUGIN_NAME, 'hook.sock');
    server = await startPluginServer({ socketPath });
    launcher = new VirtLauncherPluginHook(base, PLUGIN_NAME, socketPath);
    await launcher.waitForSocket();
  });

  afterAll(async () => {
    await server?.close();
    await rm(base, { recursive: true, force: true });
  });

  it('Boot: answers with the converter\'s rewrite, byte for byte the golden file', async () => {
    const out = await launcher.mutateDomain(DOMAIN, vmiJson(VMI), 'Boot');
    expect(out.toString('utf8')).toBe(GOLDEN);
    expect(out.toString('utf8')).toBe(convertDomain(DOMAIN.toString('utf8'), parseVmi(VMI)));
  });

  it('one converter, two protocols: MutateDomain and the hook sidecar\'s OnDefineDomain give the same domain', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'hk-'));
    const sidecar = await startSidecar({ hooksDir: dir });
    const hooks = new VirtLauncherHooks();
    try {
      await hooks.collect(sidecar.socketPath);
      const viaHook = await hooks.onDefineDomain(DOMAIN, vmiJson(VMI));
      expect((await launcher.mutateDomain(DOMAIN, vmiJson(VMI), 'Boot')).equals(viaHook)).toBe(true);
    } finally {
      hooks.close();
      await sidecar.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('MigrationTarget on the source\'s domain (which already has our disks) returns it unchanged', async () => {
    const booted = await launcher.mutateDomain(DOMAIN, vmiJson(VMI), 'Boot');
    for (const ctx of ['MigrationSource', 'MigrationTarget'] as const) {
      expect((await launcher.mutateDomain(booted, vmiJson(VMI), ctx)).toString('utf8')).toBe(booted.toString('utf8'));
    }
  });

  it('a VMI without kubevirt-spdk.io/volumes passes unchanged', async () => {
    const plain = { ...VMI, metadata: { ...VMI.metadata, annotations: {} } };
    expect((await launcher.mutateDomain(DOMAIN, vmiJson(plain), 'Boot')).equals(DOMAIN)).toBe(true);
  });

  it('an unknown invocation context still gets the rewrite (the rewrite does not depend on it)', async () => {
    const res = await launcher.call({ domain_type: 'libvirt', domain: DOMAIN, vmi: vmiJson(VMI), sidecar_context: { invocation_context: 'Hotplug' } });
    expect(res.domain.toString('utf8')).toBe(GOLDEN);
    const none = await launcher.call({ domain_type: 'libvirt', domain: DOMAIN, vmi: vmiJson(VMI), sidecar_context: null });
    expect(none.domain.toString('utf8')).toBe(GOLDEN);
  });

  it('refuses what it cannot rewrite with INVALID_ARGUMENT naming the field', async () => {
    const bad = (over: Partial<Parameters<VirtLauncherPluginHook['call']>[0]>) =>
      rejection(launcher.call({ domain_type: 'libvirt', domain: DOMAIN, vmi: vmiJson(VMI), sidecar_context: { invocation_context: 'Boot' }, ...over }));
    expect(await bad({ domain_type: 'json' })).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringContaining('domain_type: must be "libvirt", found "json"') });
    expect(await bad({ domain: Buffer.alloc(0) })).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringContaining('domain: is empty') });
    expect(await bad({ vmi: Buffer.from('{not json') })).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringContaining('vmi: not valid JSON') });
    const badVols = { ...VMI, metadata: { ...VMI.metadata, annotations: { 'kubevirt-spdk.io/volumes': '- name: x\n  spdkVhostBlkDisk: {bogus: 1}\n' } } };
    expect(await bad({ vmi: vmiJson(badVols) })).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringContaining('bogus') });
  });

  it('close() removes its socket', async () => {
    const d = await mkdtemp(path.join(os.tmpdir(), 'kvp-'));
    try {
      const s = await startPluginServer({ socketPath: path.join(d, PLUGIN_NAME, 'x.sock') });
      await s.close();
      expect(await readdir(path.join(d, PLUGIN_NAME))).toEqual([]);
    } finally {
      await rm(d, { recursive: true, force: true });
    }
  });

  it('virt-launcher refuses a symlinked socket path, so a planted link cannot redirect the hook', async () => {
    const d = await mkdtemp(path.join(os.tmpdir(), 'kvp-'));
    try {
      await mkdir(path.join(d, PLUGIN_NAME));
      await symlink(server.socketPath, path.join(d, PLUGIN_NAME, 'link.sock'));
      const viaLink = new VirtLauncherPluginHook(d, PLUGIN_NAME, path.join(d, PLUGIN_NAME, 'link.sock'));
      await expect(viaLink.mutateDomain(DOMAIN, vmiJson(VMI), 'Boot')).rejects.toThrow(/symlink/);
    } finally {
      await rm(d, { recursive: true, force: true });
    }
  });
});

describe('plugin socket path rules', () => {
  it('the default socket satisfies KubeVirt\'s rules for our Plugin CR', () => {
    expect(checkPluginSocketPath(DEFAULT_PLUGIN_SOCKET, PLUGIN_NAME)).toEqual([]);
  });

  it('refuses paths outside the plugin\'s directory, without .sock, or too long for sun_path', () => {
    expect(checkPluginSocketPath('/var/run/kubevirt-plugin/other/hook.sock', PLUGIN_NAME)[0]).toMatch(/must be a path under \/var\/run\/kubevirt-plugin\/kubevirt-spdk\//);
    expect(checkPluginSocketPath('/var/run/kubevirt-plugin/kubevirt-spdk/../other/hook.sock', PLUGIN_NAME)[0]).toMatch(/must be a path under/);
    expect(checkSocketPath('/tmp/hook')).toEqual(['socket: "/tmp/hook" must end with .sock']);
    expect(checkSocketPath(`/tmp/${'a'.repeat(110)}.sock`)[0]).toMatch(/longer than 107 bytes/);
  });
});
