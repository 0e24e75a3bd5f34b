import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { FlagError, defineCommand, duration, flagsOf, int, oneOf, parseFlags, port, quantity, text, wantsHelp } from '../../../src/config.js';
import { helpText } from '../../../src/cli/help.js';
import { COMMANDS } from '../../../src/cli/registry.js';
import { cliArgv } from '../../helpers/cli.js';

const demo = defineCommand({
  name: 'demo',
  schema: z
    .object({
      stateDir: text('DIR').describe('Where state lives.'),
      resync: duration().default('30s').describe('How often.'),
      size: quantity({ min: 2 ** 20, minText: '1Mi' }).default('1Gi').describe('How big.'),
      port: port().optional().describe('Where to listen.'),
      mode: oneOf(['a', 'b']).default('a').describe('Which way.'),
      count: int({ min: 1, max: 9 }).default('3').describe('How many.'),
      verbose: z.boolean().default(false).describe('Say more.'),
      node: text('NAME').optional().describe('Which node.'),
      offline: z.boolean().default(false).describe('No cluster.'),
    })
    .superRefine((c, ctx) => {
      if (c.offline && c.port !== undefined) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['port'], message: 'only applies without --offline' });
    }),
  flags: { node: { env: 'DEMO_NODE', envUnless: 'offline' }, verbose: { short: 'v' } },
});

const problems = (argv: string[], env: NodeJS.ProcessEnv = {}): string[] => {
  try {
    parseFlags(demo, argv, env);
  } catch (e) {
    if (e instanceof FlagError) return e.problems;
    throw e;
  }
  return [];
};

describe('flags from a config schema', () => {
  it('names flags in kebab case, applies defaults as the user would write them, and converts values', () => {
    expect(parseFlags(demo, ['--state-dir', 's', '-v', '--count=7'], {})).toEqual({ stateDir: 's', resync: 30_000, size: 2 ** 30, mode: 'a', count: 7, verbose: true, offline: false });
    expect(parseFlags(demo, ['--state-dir', 's', '--resync', '1m30s', '--size', '64Mi', '--port', '0'], {})).toMatchObject({ resync: 90_000, size: 64 * 2 ** 20, port: 0 });
  });

  it('reads the env fallback only when the flag is absent, and not when the named flag is set', () => {
    expect(parseFlags(demo, ['--state-dir', 's'], { DEMO_NODE: 'n1' }).node).toBe('n1');
    expect(parseFlags(demo, ['--state-dir', 's', '--node', 'n2'], { DEMO_NODE: 'n1' }).node).toBe('n2');
    expect(parseFlags(demo, ['--state-dir', 's', '--offline'], { DEMO_NODE: 'n1' }).node).toBeUndefined();
  });

  it('refuses bad values naming each flag and its rule, all at once', () => {
    expect(problems(['--resync', 'soon', '--size', '1k', '--port', '70000', '--mode', 'c', '--count', '0'])).toEqual([
      '--state-dir: is required',
      '--resync: soon is not a duration (e.g. 30s, 5m)',
      '--size: "1k" must be a quantity of at least 1Mi',
      '--port: "70000" is not a TCP port (0-65535)',
      '--mode: "c" must be one of a, b',
      '--count: 0 must be an integer in 1..9',
    ]);
    expect(problems(['--state-dir', 's', '--resync', '600h'])).toEqual(['--resync: 600h is longer than the limit of 2147483647 ms (about 24 days)']);
    expect(problems(['--state-dir', '', '--offline', '--port', '1'])).toEqual(['--state-dir: must not be empty', '--port: only applies without --offline']);
  });

  it('refuses unknown flags, missing values and positional arguments', () => {
    expect(problems(['--state-dir', 's', '--nope'])[0]).toMatch(/--nope/);
    expect(problems(['--state-dir'])[0]).toMatch(/--state-dir/);
    expect(problems(['--state-dir', 's', 'extra'])[0]).toMatch(/extra/);
  });

  it('help lists every flag with its value, default, env and rule; required flags make the synopsis', () => {
    const help = helpText(demo, 'a demo');
    expect(help).toMatch(/^usage: kubevirt-spdk demo --state-dir DIR \[flags\]\n\na demo\n/);
    expect(help).toMatch(/--resync DURATION +How often\. \(default 30s; at most 24 days\)/);
    expect(help).toMatch(/--size QUANTITY +How big\. \(default 1Gi; at least 1Mi\)/);
    expect(help).toMatch(/--node NAME +Which node\. \(env DEMO_NODE unless --offline\)/);
    expect(help).toMatch(/-v, --verbose +Say more\./);
    expect(wantsHelp(['--state-dir', 'x', '-h'])).toBe(true);
    expect(wantsHelp(['--', '--help'])).toBe(false);
  });
});

describe('every command of kubevirt-spdk', () => {
  it('describes each flag, and its defaults satisfy its own rules', async () => {
    for (const [name, entry] of Object.entries(COMMANDS)) {
      const cmd = await entry.load();
      const fields = flagsOf(cmd);
      expect(fields.length, name).toBeGreaterThan(0);
      expect(fields.filter((f) => !f.description).map((f) => `${name} --${f.flag}`)).toEqual([]);
      let shape: z.ZodTypeAny = cmd.schema;
      while (shape instanceof z.ZodEffects) shape = shape.innerType();
      if (!(shape instanceof z.ZodObject)) throw new Error(`${name}: not an object schema`);
      for (const f of fields.filter((x) => x.defaultText !== undefined)) expect(shape.shape[f.key].safeParse(undefined).success, `${name} --${f.flag}`).toBe(true);
    }
  });

  it('answers --help with the flags from the schema, exit 0', () => {
    const { command, args } = cliArgv('device-plugin', '--help');
    const r = spawnSync(command, args, { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^usage: kubevirt-spdk device-plugin --vhost-dir DIR --state-dir DIR \[flags\]/);
    const flat = r.stdout.replace(/\s+/g, ' ');
    expect(flat).toContain("--prestart-timeout DURATION How long PreStartContainer waits for the slot to be ready. (default 25s; above 0 and below kubelet's 30s)");
    expect(flat).toContain('--slots N Number of vhost slots this node advertises (kubevirt-spdk.io/vhost-slot capacity). (default 32; 1..1000)');
  });
});
