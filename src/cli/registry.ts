/**
 * The subcommands of `kubevirt-spdk` and the flags every one of them takes. Commands load
 * lazily: `kubevirt-spdk webhook` never loads the agent, and `--help` of the standalone agent
 * loads neither gRPC nor the Kubernetes client.
 */
import { z } from 'zod';
import { defineCommand, oneOf, type Command } from '../config.js';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** Taken out of argv before the subcommand's own flags (it may stand anywhere). */
export const globalConfig = defineCommand({
  name: 'kubevirt-spdk',
  schema: z.object({
    logLevel: oneOf(LOG_LEVELS).default('info').describe('Least severe log level written (JSON lines on stderr).'),
  }),
  flags: { logLevel: { env: 'LOG_LEVEL' } },
});

interface Entry {
  summary: string;
  load(): Promise<Command>;
}

export const COMMANDS: Readonly<Record<string, Entry>> = {
  agent: { summary: 'node agent (cluster mode, or --standalone driven by files)', load: async () => (await import('./commands/agent.js')).command },
  convert: { summary: "print a libvirt domain XML rewritten with the VMI's SPDK disks", load: async () => (await import('./commands/convert.js')).command },
  sidecar: { summary: 'KubeVirt hook sidecar (gRPC Info + Callbacks v1alpha1..3)', load: async () => (await import('./commands/sidecar.js')).command },
  plugin: { summary: 'KubeVirt >= v1.9 plugin domain hook (VEP 190 MutateDomain)', load: async () => (await import('./commands/plugin.js')).command },
  webhook: { summary: 'mutating admission webhook (HTTPS)', load: async () => (await import('./commands/webhook.js')).command },
  'device-plugin': { summary: 'kubelet device plugin for vhost slots', load: async () => (await import('./commands/device-plugin.js')).command },
  status: { summary: 'what this node serves: images, disks, controllers, sessions', load: async () => (await import('./commands/status.js')).command },
  doctor: { summary: 'check this node (SPDK, hugepages, vhost dir, lvstore, kubelet, KubeVirt) and say what is wrong', load: async () => (await import('./commands/doctor.js')).command },
};
