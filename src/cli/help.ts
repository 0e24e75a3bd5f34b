/**
 * `--help` text and the flag tables of docs/configuration.md, both from a command's config
 * schema (./config.ts), so usage, docs and parser cannot disagree.
 */
import { flagsOf, type CommandConfig, type FlagField } from '../config.js';

const WIDTH = 100;

function wrap(words: string, indent: number, first: number): string[] {
  const lines: string[] = [];
  let line = '';
  let room = WIDTH - first;
  for (const w of words.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + w.length > room) {
      lines.push(line);
      line = w;
      room = WIDTH - indent;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  return lines;
}

/** Markdown/backticks read fine in a terminal except the backticks themselves. */
const plain = (s: string): string => s.replace(/`/g, '');

function facts(f: FlagField): string[] {
  return [
    ...(f.required ? ['required'] : []),
    ...(f.defaultText !== undefined && !f.boolean ? [`default ${f.defaultText}`] : []),
    ...(f.meta.env ? [`env ${f.meta.env}${f.meta.envUnless ? ` unless --${f.meta.envUnless}` : ''}`] : []),
    ...(f.rule ? [f.rule] : []),
  ];
}

const label = (f: FlagField): string => `${f.meta.short ? `-${f.meta.short}, ` : ''}--${f.flag}${f.boolean ? '' : ` ${f.value}`}`;

export function synopsis(c: CommandConfig): string[] {
  if (c.synopsis) return [...c.synopsis];
  const required = flagsOf(c)
    .filter((f) => f.required)
    .map((f) => `--${f.flag} ${f.value}`);
  return [[...required, '[flags]'].join(' ')];
}

export function helpText(c: CommandConfig, summary: string): string {
  const fields = flagsOf(c);
  const labels = [...fields.map(label), '-h, --help'];
  const col = Math.min(Math.max(...labels.map((l) => l.length)) + 4, 34);
  const rows = [...fields.map((f) => ({ l: label(f), d: `${plain(f.description ?? '')}${facts(f).length ? ` (${facts(f).join('; ')})` : ''}` })), { l: '-h, --help', d: 'Print this help.' }];
  const out = synopsis(c).map((s, i) => `${i === 0 ? 'usage:' : '      '} kubevirt-spdk ${c.name} ${s}`);
  out.push('', summary, '', 'flags:');
  for (const r of rows) {
    const pad = `  ${r.l}`.padEnd(col);
    const lines = wrap(r.d, col, pad.length > col ? WIDTH : col);
    if (pad.length > col) out.push(`  ${r.l}`);
    lines.forEach((l, i) => out.push(`${i === 0 && pad.length <= col ? pad : ' '.repeat(col)}${l}`));
  }
  out.push('', 'every command also takes --log-level LEVEL (or LOG_LEVEL)');
  if (c.notes) out.push('', c.notes);
  return `${out.join('\n')}\n`;
}

const cell = (s: string): string => s.replace(/\|/g, '\\|');

/** The Markdown table of a command's flags for docs/configuration.md. */
export function flagTable(c: CommandConfig): string {
  const rows = flagsOf(c).map((f) => {
    const value = f.boolean ? 'boolean' : `\`${f.value}\`${f.rule ? ` (${f.rule})` : ''}`;
    const def = f.required ? 'required' : f.defaultText !== undefined ? `\`${f.defaultText}\`` : '-';
    const env = f.meta.env ? `\`${f.meta.env}\`${f.meta.envUnless ? ` (not with \`--${f.meta.envUnless}\`)` : ''}` : '-';
    return `| \`--${f.flag}\`${f.meta.short ? ` / \`-${f.meta.short}\`` : ''} | ${cell(value)} | ${def} | ${env} | ${cell(f.description ?? '')} |`;
  });
  return ['| flag | value | default | env | description |', '|---|---|---|---|---|', ...rows].join('\n');
}
