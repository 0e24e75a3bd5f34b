#!/usr/bin/env node
/**
 * kubevirt-spdk: one entry point, one subcommand per component. Each subcommand module
 * exports `run(argv)` and resolves to the process exit code.
 */
import { ValidationError } from '../api/errors.js';

type Command = { describe: string; load: () => Promise<{ run(argv: string[]): Promise<number> }> };

const COMMANDS: Record<string, Command> = {
  agent: { describe: 'node agent (cluster mode, or --standalone driven by files)', load: () => import('./commands/agent.js') },
  convert: { describe: 'print a libvirt domain XML rewritten with the VMI\'s SPDK disks', load: () => import('./commands/convert.js') },
  sidecar: { describe: 'KubeVirt hook sidecar (gRPC Info + Callbacks)', load: () => import('./commands/sidecar.js') },
  webhook: { describe: 'mutating admission webhook (HTTPS)', load: () => import('./commands/webhook.js') },
  'device-plugin': { describe: 'kubelet device plugin for vhost slots', load: () => import('./commands/device-plugin.js') },
  status: { describe: 'what this node serves: images, disks, controllers, sessions', load: () => import('./commands/status.js') },
  'spdk-sim': { describe: 'SPDK JSON-RPC simulator (test double for spdk_tgt)', load: () => import('./commands/spdk-sim.js') },
};

function usage(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(14)} ${c.describe}`);
  return `usage: kubevirt-spdk <command> [options]\n\ncommands:\n${lines.join('\n')}\n`;
}

async function main(argv: string[]): Promise<number> {
  // virt-controller starts a hook sidecar image with only `--version v1alphaN` as arguments
  // (the hookSidecars annotation's args): that means the sidecar.
  if (argv[0] === '--version' && argv[1]?.startsWith('v1alpha')) argv = ['sidecar', ...argv];
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    process.stderr.write(`kubevirt-spdk: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  try {
    return await (await cmd.load()).run(rest);
  } catch (e) {
    if (e instanceof ValidationError) {
      process.stderr.write(`kubevirt-spdk ${name}: invalid input:\n${e.problems.map((p) => `  ${p}`).join('\n')}\n`);
      return 2;
    }
    process.stderr.write(`kubevirt-spdk ${name}: ${(e as Error).stack ?? String(e)}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`${String(e)}\n`);
    process.exitCode = 1;
  },
);
