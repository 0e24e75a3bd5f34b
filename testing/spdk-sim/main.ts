/**
 * The SPDK simulator as its own process, standing in for spdk_tgt in tests, the demo and
 * benchmarks: `npx tsx testing/spdk-sim/main.ts --socket PATH --vhost-dir DIR` (or
 * `npm run spdk-sim -- ...`). A test double, so it is not a command of the product binary.
 */
import { parseArgs } from 'node:util';
import { levels } from 'pino';
import { stopSignal } from '../../src/cli/signals.js';
import { createLogger } from '../../src/log.js';
import { SPDK_VERSIONS, SpdkSimulator, parseSpdkVersion } from './index.js';

const PROG = 'spdk-sim';
const LOG_LEVELS = [...Object.keys(levels.values), 'silent'];

const USAGE = `usage: npx tsx testing/spdk-sim/main.ts --socket PATH --vhost-dir DIR [--state-dir DIR] [--cpumask 0x1] [--poll-interval-ms N] [--version ${SPDK_VERSIONS.join('|')}] [--log-level LEVEL]

A simulated spdk_tgt (v24.01 by default, or --version): JSON-RPC on --socket, vhost controller
sockets in --vhost-dir. With --state-dir, lvstores on aio files survive a kill and restart.
`;

/** Runs until SIGTERM or SIGINT, then stops cleanly (controller sockets removed). */
async function run(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        socket: { type: 'string' },
        'vhost-dir': { type: 'string' },
        'state-dir': { type: 'string' },
        cpumask: { type: 'string', default: '0x1' },
        'poll-interval-ms': { type: 'string', default: '0' },
        version: { type: 'string', default: '24.01' },
        // Taken by the product CLI for every command before; kept so that callers need not change.
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    process.stderr.write(`${PROG}: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const problems: string[] = [];
  if (!values.socket) problems.push('--socket: required (path of the JSON-RPC unix socket)');
  if (!values['vhost-dir']) problems.push('--vhost-dir: required (directory for controller sockets)');
  const poll = Number(values['poll-interval-ms']);
  if (!/^\d+$/.test(values['poll-interval-ms'] ?? '')) problems.push(`--poll-interval-ms: must be a whole number of milliseconds, got "${values['poll-interval-ms']}"`);
  const version = parseSpdkVersion(values.version ?? '');
  if (!version) problems.push(`--version: must be one of ${SPDK_VERSIONS.join(', ')}, got "${values.version}"`);
  const level = values['log-level'] ?? process.env.LOG_LEVEL;
  if (level !== undefined && !LOG_LEVELS.includes(level)) problems.push(`--log-level: must be one of ${LOG_LEVELS.join(', ')}, got "${level}"`);
  if (problems.length > 0 || !values.socket || !values['vhost-dir'] || !version) {
    process.stderr.write(`${PROG}: invalid arguments:\n${problems.map((p) => `  ${p}`).join('\n')}\n\n${USAGE}`);
    return 2;
  }
  const logger = createLogger('spdk-sim', level);
  let sim: SpdkSimulator;
  try {
    sim = new SpdkSimulator({
      socketPath: values.socket,
      vhostDir: values['vhost-dir'],
      ...(values['state-dir'] ? { stateDir: values['state-dir'] } : {}),
      ...(values.cpumask ? { cpumask: values.cpumask } : {}),
      pollIntervalMs: poll,
      version,
      // Where real spdk_tgt crashes, the process dies as abruptly.
      onCrash: () => {
        process.kill(process.pid, 'SIGABRT');
      },
      logger,
    });
    await sim.start();
  } catch (e) {
    process.stderr.write(`${PROG}: ${(e as Error).message}\n`);
    return 1;
  }
  const signal = await stopSignal();
  logger.info({ event: 'signal', signal }, 'stopping');
  try {
    await sim.stop();
    return 0;
  } catch (e) {
    logger.error({ event: 'stop_failed', err: String(e) }, 'stop failed');
    return 1;
  }
}

run(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`${PROG}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  },
);
