import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { OUTPUT, REPO_ROOT, UNDOCUMENTED, allCommandFlags, commandFlags, renderConfigurationDoc } from '../../../hack/gen-config-docs.js';

const tmpDirs: string[] = [];
afterAll(async () => {
  await Promise.all(tmpDirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('docs/configuration.md', () => {
  it('is exactly what hack/gen-config-docs.ts generates (run `npx tsx hack/gen-config-docs.ts` after changing a schema or a flag)', async () => {
    const committed = await readFile(OUTPUT, 'utf8');
    expect(committed).toBe(await renderConfigurationDoc());
  });

  it('describes every schema field and every flag', async () => {
    const doc = await renderConfigurationDoc();
    const undocumented = doc.split('\n').filter((l) => l.includes(UNDOCUMENTED));
    expect(undocumented).toEqual([]);
  });

  it('documents the fields a user writes, with their rules', async () => {
    const doc = await renderConfigurationDoc();
    expect(doc).toMatch(/\| `volumes\[\]\.spdkVhostBlkDisk\.queues` \| number \| optional \| integer; >= 1; <= 256 \|/);
    expect(doc).toMatch(/\| `volumes\[\]\.spdkVhostBlkDisk\.reconnectInterval` \| string \| optional \| .*default `1s`.*the interval between QEMU's attempts/);
    expect(doc).toMatch(/\| `spec\.format` \| enum \| default `"raw"` \| one of `raw`, `qcow2` \|/);
    expect(doc).toContain('1 to 26 volumes');
  });
});

describe('flag extraction from command sources', () => {
  it('reads names, types, short names and constant defaults of parseArgs options', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cfgdoc-'));
    tmpDirs.push(dir);
    await writeFile(path.join(dir, 'consts.ts'), 'export const LIMIT_MS = 25_000;\nexport const DIR = "/var/x";\n');
    const file = path.join(dir, 'fake.ts');
    await writeFile(
      file,
      `import { parseArgs } from 'node:util';
import { LIMIT_MS, DIR } from './consts.js';
export function run(argv: string[]) {
  return parseArgs({ args: argv, options: {
    'plain-flag': { type: 'string' },
    dir: { type: 'string', default: DIR },
    wait: { type: 'string', default: \`\${LIMIT_MS / 1000}s\` },
    bytes: { type: 'string', default: String(LIMIT_MS * 2) },
    help: { type: 'boolean', short: 'h' },
  }, strict: true });
}
`,
    );
    const rows = await commandFlags('fake', file);
    expect(rows.map((r) => [r.flag, r.type, r.short, r.defaultValue])).toEqual([
      ['plain-flag', 'string', undefined, undefined],
      ['dir', 'string', undefined, '/var/x'],
      ['wait', 'string', undefined, '25s'],
      ['bytes', 'string', undefined, '50000'],
      ['help', 'boolean', 'h', undefined],
    ]);
    expect(rows.every((r) => r.description === UNDOCUMENTED)).toBe(true);
  });

  it('refuses a command whose flags it cannot read', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cfgdoc-'));
    tmpDirs.push(dir);
    const file = path.join(dir, 'opaque.ts');
    await writeFile(file, 'export function run(argv: string[]) { return argv.length; }\n');
    await expect(commandFlags('opaque', file)).rejects.toThrow(/no parseArgs/);
  });
});

/** Joins shell continuation lines so that a command and its flags are on one line. */
function commandLines(text: string): string[] {
  return text.replace(/\\\n\s*/g, ' ').split('\n');
}

describe('hand-written docs', () => {
  it('name only flags that the command accepts', async () => {
    const flags = await allCommandFlags();
    const files = [path.join(REPO_ROOT, 'README.md'), ...(await readdir(path.join(REPO_ROOT, 'docs'))).filter((f) => f.endsWith('.md')).map((f) => path.join(REPO_ROOT, 'docs', f))];
    const wrong: string[] = [];
    let checked = 0;
    for (const file of files) {
      if (file === OUTPUT) continue;
      for (const line of commandLines(await readFile(file, 'utf8'))) {
        // Each `kubevirt-spdk <command> ...` invocation up to the next one on the line.
        for (const m of line.matchAll(/kubevirt-spdk ([a-z-]+)((?:(?!kubevirt-spdk )[^`|])*)/g)) {
          const known = flags.get(m[1] ?? '');
          if (!known) continue;
          for (const f of (m[2] ?? '').matchAll(/--([a-z][a-z0-9-]*)/g)) {
            checked++;
            if (!known.some((r) => r.flag === f[1]) && f[1] !== 'help') wrong.push(`${path.basename(file)}: kubevirt-spdk ${m[1]} --${f[1]}`);
          }
        }
      }
    }
    expect(wrong).toEqual([]);
    expect(checked).toBeGreaterThan(0);
  });
});
