import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { formatBytes } from '../../api/quantity.js';
import { NodeStatusSchema, type NodeStatus } from '../../agent/node-status.js';
import { formatZodError, ValidationError } from '../../api/errors.js';
import { defineCommand, text, type Command } from '../../config.js';

const StatusConfigSchema = z.object({
  stateDir: text('DIR').default('/var/lib/kubevirt-spdk/state').describe("The agent's state directory (reads `status.json`)."),
  json: z.boolean().default(false).describe('Print the status as JSON.'),
});

/** The status file is stale when the agent missed this many resyncs. */
const STALE_PERIODS = 3;

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n');
}

export function staleness(s: NodeStatus, now: number): string | undefined {
  const age = now - Date.parse(s.updatedAt);
  const limit = Math.max(s.resyncMs, 10_000) * STALE_PERIODS;
  return age > limit ? `status is stale: last written ${Math.round(age / 1000)}s ago (the agent resyncs every ${Math.round(s.resyncMs / 1000)}s); is the agent running?` : undefined;
}

export function render(s: NodeStatus, now: number): string {
  const out: string[] = [];
  const stale = staleness(s, now);
  if (stale) out.push(`WARNING: ${stale}`, '');
  out.push(`backend: ${s.backend.kind} ${s.backend.ok ? 'ok' : `UNAVAILABLE${s.backend.message ? ` (${s.backend.message})` : ''}`}`);
  out.push(`updated: ${s.updatedAt} (reconcile ${s.reconcile.reason}, ${s.reconcile.passes} pass(es), ${s.reconcile.durationMs} ms, ${s.reconcile.converged ? 'converged' : 'NOT converged'})`, '');
  out.push('IMAGES');
  out.push(table([['NAME', 'PHASE', 'SIZE', 'CLONES', 'LAST USE'], ...s.images.map((i) => [i.name, i.phase, formatBytes(i.sizeBytes), String(i.cloneCount), i.lastUse ?? '-'])]), '');
  out.push('DISKS');
  out.push(table([['ID', 'VMI', 'SIZE', 'IMAGE', 'REF'], ...s.disks.map((d) => [d.id, d.vmi ?? (d.owned ? '-' : '(bdev)'), formatBytes(d.sizeBytes), d.image ?? '-', d.ref])]), '');
  out.push('CONTROLLERS');
  out.push(table([['NAME', 'BDEV', 'SESSIONS', 'SOCKET'], ...s.controllers.map((c) => [c.name, c.diskRef, String(c.sessions), c.socketPath])]), '');
  out.push('VMIS');
  const vmiRows = s.vmis.flatMap((v) =>
    v.problems.length
      ? [[`${v.vmi.namespace}/${v.vmi.name}`, v.slot ?? '-', '-', 'Failed', '-', v.problems.join('; ')]]
      : // DATA ON: the node whose storage holds the disk's blocks (another node during a migration).
        v.disks.map((d) => [`${v.vmi.namespace}/${v.vmi.name}`, v.slot ?? '-', d.name, d.phase, d.dataNode ?? '-', d.message ?? d.socket ?? '']),
  );
  out.push(table([['VMI', 'SLOT', 'DISK', 'PHASE', 'DATA ON', 'DETAIL'], ...vmiRows]));
  if (s.orphans.length) out.push('', 'ORPHANS', table([['OBJECT', 'NAME', 'FIRST SEEN', 'COLLECT AT'], ...s.orphans.map((o) => [o.object, o.name, o.firstSeen, o.collectAt])]));
  if (s.blocked.length) out.push('', 'BLOCKED', table([['OBJECT', 'NAME', 'REASON'], ...s.blocked.map((b) => [b.object, b.name, b.reason])]));
  if (s.problems.length) out.push('', 'PROBLEMS', ...s.problems.map((p) => `  ${p}`));
  return `${out.join('\n')}\n`;
}

async function run(c: z.output<typeof StatusConfigSchema>): Promise<number> {
  const file = path.join(c.stateDir, 'status.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    process.stderr.write(`kubevirt-spdk status: cannot read ${file}: ${(e as Error).message} (has the agent run with --state-dir ${c.stateDir}?)\n`);
    return 1;
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new ValidationError([`${file}: not valid JSON: ${(e as Error).message}`]);
  }
  const parsed = NodeStatusSchema.safeParse(doc);
  if (!parsed.success) throw new ValidationError(formatZodError(file, parsed.error));
  const now = Date.now();
  const stale = staleness(parsed.data, now);
  if (c.json) process.stdout.write(`${JSON.stringify({ ...parsed.data, ...(stale ? { stale } : {}) }, null, 2)}\n`);
  else process.stdout.write(render(parsed.data, now));
  return stale ? 3 : 0;
}

export const command: Command<typeof StatusConfigSchema> = { ...defineCommand({ name: 'status', schema: StatusConfigSchema }), run };
