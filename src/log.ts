import { pino, destination, stdTimeFunctions, type Logger } from 'pino';

/**
 * Structured JSON logs on stderr, one line per event. Callers bind the VMI
 * (namespace/name/uid), disk, slot and node with `logger.child({...})` so that every line
 * carries them.
 */
export type { Logger };

export function createLogger(component: string, level = process.env.LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { component }, timestamp: stdTimeFunctions.isoTime }, destination(2));
}

/** A logger that drops everything: the default for library code under test. */
export const silentLogger: Logger = pino({ level: 'silent' });
