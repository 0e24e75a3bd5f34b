import { z } from 'zod';
import { createLogger } from '../../log.js';
import { SPDK_VERSIONS, SpdkSimulator, parseSpdkVersion } from '../../simulator/index.js';
import { stopSignal } from '../signals.js';
import { defineCommand, int, text, typed, type Command } from '../config.js';

/**
 * A simulated spdk_tgt (v24.01 by default, or --version): JSON-RPC on --socket, vhost controller
 * sockets in --vhost-dir. With --state-dir, lvstores on aio files survive a kill and restart.
 */
const SpdkSimConfigSchema = z
  .object({
    socket: text('PATH').optional().describe('JSON-RPC unix socket to listen on. Required.'),
    vhostDir: text('DIR').optional().describe('Directory for controller sockets (like spdk_tgt `-S`). Required.'),
    stateDir: text('DIR').optional().describe('With it, lvstores on aio files survive a kill and restart.'),
    cpumask: text('MASK').default('0x1').describe('Reported core mask.'),
    pollIntervalMs: int({ value: 'MS', message: (t) => `must be a whole number of milliseconds, got "${t}"` }).default('0').describe('Simulated poller interval (whole milliseconds).'),
    version: typed({ value: SPDK_VERSIONS.join('|') }, (t) => {
      const v = parseSpdkVersion(t);
      return v ? { ok: v } : { error: `must be one of ${SPDK_VERSIONS.join(', ')}, got "${t}"` };
    })
      .default('24.01')
      .describe('SPDK release to answer as (methods, fields, messages).'),
  })
  .superRefine((c, ctx) => {
    if (!c.socket) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['socket'], message: 'required (path of the JSON-RPC unix socket)' });
    if (!c.vhostDir) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['vhostDir'], message: 'required (directory for controller sockets)' });
  });

/** Runs until SIGTERM or SIGINT, then stops cleanly (controller sockets removed). */
export const command: Command<typeof SpdkSimConfigSchema> = {
  ...defineCommand({ name: 'spdk-sim', schema: SpdkSimConfigSchema }),
  async run(c) {
    const logger = createLogger('spdk-sim');
    let sim: SpdkSimulator;
    try {
      sim = new SpdkSimulator({
        socketPath: c.socket ?? '',
        vhostDir: c.vhostDir ?? '',
        ...(c.stateDir ? { stateDir: c.stateDir } : {}),
        cpumask: c.cpumask,
        pollIntervalMs: c.pollIntervalMs,
        version: c.version,
        // Where real spdk_tgt crashes, the process dies as abruptly.
        onCrash: () => {
          process.kill(process.pid, 'SIGABRT');
        },
        logger,
      });
      await sim.start();
    } catch (e) {
      process.stderr.write(`kubevirt-spdk spdk-sim: ${(e as Error).message}\n`);
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
  },
};
