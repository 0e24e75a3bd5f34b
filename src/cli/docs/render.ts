/**
 * docs/configuration.md, rendered from the schemas: the API schemas (./api-tables.ts) and the
 * config schema of every command (../registry.ts). A unit test compares the committed file.
 *
 *   npx tsx src/cli/docs/render.ts           # rewrite docs/configuration.md
 *   npx tsx src/cli/docs/render.ts --check   # exit 1 when the committed file differs
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { API_GROUP, API_VERSION, CachedImageSpecSchema } from '../../api/cachedimage.js';
import { SlotStatusSchema, VmiStatusSchema } from '../../api/status.js';
import { SLOT_ANNOTATION, SLOT_RE, STATUS_ANNOTATION, SpdkVolumeSchema, SpdkVolumesSchema, VHOST_SLOT_RESOURCE, VOLUMES_ANNOTATION } from '../../api/volumes.js';
import { flagsOf, type FlagField } from '../../config.js';
import { flagTable } from '../help.js';
import { COMMANDS, globalConfig } from '../registry.js';
import { apiTables } from './api-tables.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const OUTPUT = path.join(REPO_ROOT, 'docs', 'configuration.md');
export { UNDOCUMENTED } from './api-tables.js';

/** Every command's flags (each also takes the global ones), by command name. */
export async function allCommandFlags(): Promise<Map<string, FlagField[]>> {
  const global = flagsOf(globalConfig);
  const out = new Map<string, FlagField[]>();
  for (const [name, entry] of Object.entries(COMMANDS)) out.set(name, [...flagsOf(await entry.load()), ...global]);
  return out;
}

export async function renderConfigurationDoc(): Promise<string> {
  const [volumesTable, imageTable, statusTable, slotTable] = apiTables([
    [SpdkVolumeSchema, 'volumes[]'],
    [CachedImageSpecSchema, 'spec'],
    [VmiStatusSchema, ''],
    [SlotStatusSchema, ''],
  ]);
  const volMin = SpdkVolumesSchema._def.schema._def.minLength?.value;
  const volMax = SpdkVolumesSchema._def.schema._def.maxLength?.value;
  const commands: string[] = [];
  for (const [name, entry] of Object.entries(COMMANDS)) {
    commands.push(`### \`kubevirt-spdk ${name}\`\n\n${entry.summary[0]?.toUpperCase()}${entry.summary.slice(1)}.\n\n${flagTable(await entry.load())}`);
  }
  return `<!-- Generated from the schemas by src/cli/docs/render.ts. Do not edit: run \`npx tsx src/cli/docs/render.ts\`. -->
# Configuration reference

Every table below is generated from the code that enforces it (the zod schemas in
\`src/api/\`, and the config schema of each command, from which its flags and \`--help\` come
too), and a unit test fails when this file and the code disagree.

## VMI annotation \`${VOLUMES_ANNOTATION}\`

A YAML (or JSON) list of volumes in the VMI's (or VM template's) \`metadata.annotations\`.
The webhook, the agent and the sidecar parse it with the same schema; an error names the
field and the rule, e.g. \`volumes[0].spdkVhostBlkDisk.capacity: is required for image and blank disks\`.

List rules: ${volMin ?? 0} to ${volMax ?? 'any'} volumes; \`name\` unique; \`bootOrder\` unique.
Disk rules: exactly one of \`image\`, \`blank\`, \`bdev\`; \`capacity\` is required for \`image\` and \`blank\`.
Unknown fields are errors at every level.

${volumesTable}

Related names:

| name | where | meaning |
|---|---|---|
| \`${VHOST_SLOT_RESOURCE}\` | launcher pod resource requests (added by the webhook) | one vhost slot per VMI; the device plugin advertises the node's slots |
| \`${SLOT_ANNOTATION}\` | VMI annotation, standalone mode only | the slot the VMI holds (matches \`${SLOT_RE.source}\`); in a cluster the device plugin decides |
| \`${STATUS_ANNOTATION}\` | VMI annotation, written by the agent | per-disk status (below) |

## \`CachedImage\` (\`${API_GROUP}/${API_VERSION}\`, cluster-scoped)

\`metadata.name\` is a DNS-1123 label (at most 63 characters); volumes refer to it with \`image:\`.

${imageTable}

## Status annotation \`${STATUS_ANNOTATION}\` (JSON, written by the agent)

${statusTable}

## Slot readiness file \`<state-dir>/slots/<slot>.json\` (agent -> device plugin)

Written atomically by the agent after each reconcile of a slot; the device plugin's
PreStartContainer waits until \`ready\` is true.

${slotTable}

## Command-line flags

\`kubevirt-spdk <command> --help\` prints the same as the table of that command. Quantities are
Kubernetes quantities (\`64Gi\`), durations Go durations (\`30s\`, \`5m\`). A flag that is not
given takes its environment variable (column env) when it has one, else its default. A bad
value is refused (exit 2) with a message that names the flag and the rule.

### Every command

${flagTable(globalConfig)}

${commands.join('\n\n')}
`;
}

async function main(): Promise<number> {
  const doc = await renderConfigurationDoc();
  if (process.argv.includes('--check')) {
    const current = await readFile(OUTPUT, 'utf8').catch(() => '');
    if (current !== doc) {
      process.stderr.write(`${path.relative(REPO_ROOT, OUTPUT)} is out of date: run npx tsx src/cli/docs/render.ts\n`);
      return 1;
    }
    return 0;
  }
  await writeFile(OUTPUT, doc);
  process.stdout.write(`wrote ${path.relative(REPO_ROOT, OUTPUT)}\n`);
  return 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`${(e as Error).message}\n`);
      process.exitCode = 1;
    },
  );
}
