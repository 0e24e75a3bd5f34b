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
  sidecar: { describe: 'KubeVirt hook sidecar (gRPC Info + Callbacks v1alpha1..3)', load: () => import('./commands/sidecar.js') },
  plugin: { describe: 'KubeVirt >= v1.9 plugin domain hook (VEP 190 MutateDomain)', load: () => import('./commands/plugin.js') },
  webhook: { describe: 'mutating admission webhook (HTTPS)', load: () => import('./commands/webhook.js') },
  'device-plugin': { describe: 'kubelet device plugin for vhost slots', load: () => import('./commands/device-plugin.js') },
  status: { describe: 'what this node serves: images, disks, controllers, sessions', load: () => import('./commands/status.js') },
  doctor: { describe: 'check this node (SPDK, hugepages, vhost dir, lvstore, kubelet, KubeVirt) and say what is wrong', load: () => import('./commands/doctor.js') },
};

function usage(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(14)} ${c.describe}`);
  return `usage: kubevirt-spdk <command> [--log-level LEVEL] [options]\n\ncommands:\n${lines.join('\n')}\n\nevery command takes --log-level (${LOG_LEVELS.join('|')}; or LOG_LEVEL), default info\n`;
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/**
 * `--log-level` is common to every command, so it is taken out here and handed to the
 * loggers through LOG_LEVEL (which createLogger reads) instead of in each command's flags.
 */
function takeLogLevel(argv: string[]): { argv: string[]; level?: string } {
  const out: string[] = [];
  let level: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--') {
      out.push(...argv.slice(i));
      break;
    }
    if (a === '--log-level') level = argv[++i] ?? '';
    else if (a.startsWith('--log-level=')) level = a.slice('--log-level='.length);
    else out.push(a);
  }
  return { argv: out, ...(level !== undefined ? { level } : {}) };
}

async function main(argv: string[]): Promise<number> {
  // virt-controller starts a hook sidecar image with only `--version v1alphaN` as arguments
  // (the hookSidecars annotation's args): that means the sidecar.
  if (argv[0] === '--version' && argv[1]?.startsWith('v1alpha')) argv = ['sidecar', ...argv];
  const taken = takeLogLevel(argv);
  argv = taken.argv;
  const level = taken.level ?? process.env.LOG_LEVEL;
  if (level !== undefined && !LOG_LEVELS.includes(level)) {
    process.stderr.write(`kubevirt-spdk: --log-level: "${level}" must be one of ${LOG_LEVELS.join(', ')}\n`);
    return 2;
  }
  if (level !== undefined) process.env.LOG_LEVEL = level;
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
    // Known failures of the node's own state (an unusable journal) are reported, not dumped.
    if (e instanceof Error && e.name === 'JournalError') {
      process.stderr.write(`kubevirt-spdk ${name}: ${e.message}\n`);
      return 1;
    }
    // node:util parseArgs refusing a flag (unknown option, missing value, positional) is bad usage, not a crash.
    if ((e as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS_')) {
      process.stderr.write(`kubevirt-spdk ${name}: ${(e as Error).message} (see kubevirt-spdk ${name} --help)\n`);
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
