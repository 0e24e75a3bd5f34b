#!/usr/bin/env node
/**
 * kubevirt-spdk: one entry point, one subcommand per component. Each subcommand is a
 * composition root (src/cli/commands/*.ts): a config schema, from which its flags, `--help`
 * and docs come, and `run(config)`, which resolves to the process exit code.
 */
import { ValidationError } from '../api/errors.js';
import { FlagError, parseFlags, parseValues, wantsHelp } from '../config.js';
import { helpText } from './help.js';
import { COMMANDS, LOG_LEVELS, globalConfig } from './registry.js';

function usage(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(14)} ${c.summary}`);
  return `usage: kubevirt-spdk <command> [--log-level LEVEL] [options]\n\ncommands:\n${lines.join('\n')}\n\nevery command takes --log-level (${LOG_LEVELS.join('|')}; or LOG_LEVEL), default info\n`;
}

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
  try {
    process.env.LOG_LEVEL = parseValues(globalConfig, { 'log-level': taken.level }, process.env).logLevel;
  } catch (e) {
    if (!(e instanceof FlagError)) throw e;
    process.stderr.write(`kubevirt-spdk: ${e.problems.join('; ')}\n`);
    return 2;
  }
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(usage());
    return name === undefined ? 2 : 0;
  }
  const entry = COMMANDS[name];
  if (!entry) {
    process.stderr.write(`kubevirt-spdk: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  try {
    const cmd = await entry.load();
    if (wantsHelp(rest)) {
      process.stdout.write(helpText(cmd, entry.summary));
      return 0;
    }
    return await cmd.run(parseFlags(cmd, rest, process.env));
  } catch (e) {
    if (e instanceof FlagError) {
      process.stderr.write(`kubevirt-spdk ${name}: invalid flags:\n${e.problems.map((p) => `  ${p}`).join('\n')}\n(see kubevirt-spdk ${name} --help)\n`);
      return 2;
    }
    if (e instanceof ValidationError) {
      process.stderr.write(`kubevirt-spdk ${name}: invalid input:\n${e.problems.map((p) => `  ${p}`).join('\n')}\n`);
      return 2;
    }
    // Known failures of the node's own state (an unusable journal) are reported, not dumped.
    if (e instanceof Error && e.name === 'JournalError') {
      process.stderr.write(`kubevirt-spdk ${name}: ${e.message}\n`);
      return 1;
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
