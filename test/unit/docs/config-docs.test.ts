import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { OUTPUT, REPO_ROOT, UNDOCUMENTED, allCommandFlags, renderConfigurationDoc } from '../../../src/cli/docs/render.js';

describe('docs/configuration.md', () => {
  it('is exactly what the schemas render (run `npx tsx src/cli/docs/render.ts` after changing a schema or a flag)', async () => {
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

describe('command flags in the docs', () => {
  it('every flag of every command has a description, and its table row shows the flag, default and env', async () => {
    const flags = await allCommandFlags();
    expect([...flags.keys()].sort()).toEqual(['agent', 'convert', 'device-plugin', 'doctor', 'plugin', 'sidecar', 'status', 'webhook']);
    const missing = [...flags].flatMap(([cmd, rows]) => rows.filter((r) => !r.description).map((r) => `${cmd} --${r.flag}`));
    expect(missing).toEqual([]);
    const doc = await renderConfigurationDoc();
    expect(doc).toMatch(/\| `--resync` \| `DURATION` \(at most 24 days\) \| `30s` \| - \| Period of the full reconcile/);
    expect(doc).toMatch(/\| `--node` \| `NAME` \| - \| `NODE_NAME` \(not with `--standalone`\) \|/);
    expect(doc).toMatch(/\| `--tls-cert` \| `FILE` \| required \| - \|/);
    expect(doc).toMatch(/\| `--log-level` \| `fatal\\\|error.*\| `info` \| `LOG_LEVEL` \|/);
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
