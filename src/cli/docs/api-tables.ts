/**
 * Tables of the user-facing API schemas (src/api/: the volumes annotation, CachedImage, the
 * status annotation and slot file) for docs/configuration.md, walked from the zod schemas.
 *
 * Descriptions live here, keyed by field path, because the API schemas carry no `.describe()`
 * yet; a `.describe()` on a schema wins over the text here. A description for a field that no
 * longer exists is an error; a field without one is rendered as UNDOCUMENTED and fails the docs test.
 */
import { z } from 'zod';

export const UNDOCUMENTED = 'UNDOCUMENTED';

/** Field descriptions by path (`[]` marks a list element). */
const FIELD_DOCS: Record<string, string> = {
  'volumes[]': 'One SPDK disk of the VMI, shaped like a KubeVirt volume.',
  'volumes[].name': 'Disk name; also the vhost-user socket name inside the pod (`/var/run/kubevirt-spdk/<name>`) and the controller name `<slot>/<name>` on the node.',
  'volumes[].spdkVhostBlkDisk': 'The disk. Exactly one of `image`, `blank`, `bdev`.',
  'volumes[].spdkVhostBlkDisk.image': 'Name of a `CachedImage`: the disk is a thin copy-on-write clone of the node\'s golden copy of that image.',
  'volumes[].spdkVhostBlkDisk.blank': 'An empty thin disk of `capacity` bytes. Takes no fields (`blank: {}`).',
  'volumes[].spdkVhostBlkDisk.bdev': 'An existing bdev served as is; the agent never creates or deletes it. A name, never a path: `[A-Za-z0-9_.:-]`, optionally `<lvstore>/<lvol>`, at most 255 characters, no leading `/` and no `.` or `..` component. spdk: an SPDK bdev (for example an NVMe-oF or RBD bdev); qsd: a file in the agent\'s `--bdev-dir`.',
  'volumes[].spdkVhostBlkDisk.capacity': 'Kubernetes quantity (`20Gi`, `512M`; a bare number is bytes), at most 64Ti. Thin: space is used only when the guest writes. Must be >= the image size (checked by the webhook against the CachedImage). Required for `image` and `blank`.',
  'volumes[].spdkVhostBlkDisk.bootOrder': 'libvirt `<boot order>`; unique among the VMI\'s SPDK disks.',
  'volumes[].spdkVhostBlkDisk.queues': 'Number of virtqueues. Default: the VMI\'s vCPU count (capped at the maximum).',
  'volumes[].spdkVhostBlkDisk.reconnectInterval': 'Go duration in whole seconds, default `1s`: libvirt `<reconnect enabled=\'yes\' timeout=\'N\'/>` (QEMU `reconnect=N`), the interval between QEMU\'s attempts to reach the socket again after spdk_tgt went away. Not a deadline: QEMU retries forever, and the guest\'s I/O waits up to this long after the backend is back, so keep it small. At most 3600s.',
  'volumes[].spdkVhostBlkDisk.reconnectTimeout': 'Deprecated name of `reconnectInterval` (same meaning: an interval, never a timeout). Still read; the webhook answers with a warning. Giving both is an error.',
  'volumes[].spdkVhostBlkDisk.readonly': 'Serve the disk read-only (enforced by the vhost controller, not only by the guest).',

  spec: 'What the image is and where it comes from.',
  'spec.source': 'Where the node agent gets the image. Exactly one of `http`, `hostPath`.',
  'spec.source.http': 'Download over HTTP(S) and verify the checksum.',
  'spec.source.http.url': 'The image URL.',
  'spec.source.http.sha256': 'Expected SHA-256 of the downloaded file; a mismatch fails the import.',
  'spec.source.hostPath': 'Development only: a file already present on every node.',
  'spec.source.hostPath.path': 'Absolute path of the file on the node.',
  'spec.source.hostPath.sha256': 'Optional SHA-256 of the file.',
  'spec.format': '`raw`, or `qcow2` (converted to raw on import).',
  'spec.size': 'Virtual size (Kubernetes quantity). Discovered on import when absent; the webhook compares disk capacities against it when present.',

  node: 'Node whose agent wrote the status.',
  slot: 'The vhost slot the VMI holds on that node (`slot-07`).',
  disks: 'One entry per SPDK disk.',
  'disks[]': 'Status of one disk.',
  'disks[].name': 'Disk name from the volumes annotation.',
  'disks[].phase': '`Pending` (waiting), `Importing` (image being cached), `Provisioning` (clone/controller being created), `Ready` (socket serves), `Failed` (see `message`), `Deleting`.',
  'disks[].message': 'Why the disk is not Ready (the error the agent met), if any.',
  'disks[].socket': 'The vhost-user socket path on the node.',
  'disks[].dataNode': 'Where the disk\'s data lives (node name, or `local`); used by migration.',
  'disks[].migration': 'A migrated disk whose data is still (partly) on another node; absent once the disk is this node\'s own.',
  'disks[].migration.phase': '`Attached` (served from the other node\'s export; for good on a backend that cannot copy), `Cloned` (local clone, no copy before switchover), `Hydrating`, `Paused` (source unreachable; resumes), `Hydrated` (no longer reads from it).',
  'disks[].migration.from': 'The node the data is read from.',
  'disks[].migration.percent': 'How much of the disk is local, 0..100.',
  updatedAt: 'RFC 3339 time of the write.',
  vmi: 'The VMI that holds the slot.',
  'vmi.namespace': 'VMI namespace.',
  'vmi.name': 'VMI name.',
  'vmi.uid': 'VMI UID.',
  ready: 'True when every disk of the slot is Ready: PreStartContainer releases the compute container.',
};


export interface FieldRow {
  path: string;
  type: string;
  required: string;
  rules: string[];
  description: string;
}

export type Walk = { rows: FieldRow[]; usedDocs: Set<string> };

function stringRules(s: z.ZodString): string[] {
  return s._def.checks.map((c) => {
    switch (c.kind) {
      case 'max':
        return `at most ${c.value} characters`;
      case 'min':
        return `at least ${c.value} characters`;
      case 'regex':
        return `matches \`${c.regex.source}\``;
      case 'url':
        return 'a URL';
      default:
        return c.kind;
    }
  });
}

function numberRules(s: z.ZodNumber): string[] {
  return s._def.checks.map((c) => {
    switch (c.kind) {
      case 'int':
        return 'integer';
      case 'min':
        return `${c.inclusive ? '>=' : '>'} ${c.value}`;
      case 'max':
        return `${c.inclusive ? '<=' : '<'} ${c.value}`;
      default:
        return c.kind;
    }
  });
}

/** A field's type, its own rules, and the object/list/union below it (if any). */
interface Described {
  type: string;
  rules: string[];
  optional: boolean;
  defaultValue?: unknown;
  children?: { kind: 'object'; shape: Record<string, z.ZodTypeAny>; strict: boolean } | { kind: 'array'; element: z.ZodTypeAny } | { kind: 'union'; options: z.ZodTypeAny[] };
  description?: string;
}

function describe(schema: z.ZodTypeAny): Described {
  const own = schema.description;
  const withDesc = (d: Described): Described => (own !== undefined && d.description === undefined ? { ...d, description: own } : d);
  if (schema instanceof z.ZodOptional) return withDesc({ ...describe(schema.unwrap() as z.ZodTypeAny), optional: true });
  if (schema instanceof z.ZodDefault) {
    const inner = describe(schema._def.innerType as z.ZodTypeAny);
    return withDesc({ ...inner, optional: true, defaultValue: schema._def.defaultValue() });
  }
  if (schema instanceof z.ZodEffects) {
    const inner = describe(schema.innerType() as z.ZodTypeAny);
    // A transform over z.unknown() is a custom parser (quantity, duration): the type is
    // what it accepts, which only the description can say.
    return withDesc(inner.type === 'any' ? { ...inner, type: 'string' } : inner);
  }
  if (schema instanceof z.ZodString) return withDesc({ type: 'string', rules: stringRules(schema), optional: false });
  if (schema instanceof z.ZodNumber) return withDesc({ type: 'number', rules: numberRules(schema), optional: false });
  if (schema instanceof z.ZodBoolean) return withDesc({ type: 'boolean', rules: [], optional: false });
  if (schema instanceof z.ZodEnum) return withDesc({ type: 'enum', rules: [`one of ${(schema.options as string[]).map((o) => `\`${o}\``).join(', ')}`], optional: false });
  if (schema instanceof z.ZodLiteral) return withDesc({ type: 'string', rules: [`exactly \`${String(schema.value)}\``], optional: false });
  if (schema instanceof z.ZodUnknown || schema instanceof z.ZodAny) return withDesc({ type: 'any', rules: [], optional: false });
  if (schema instanceof z.ZodObject) {
    const shape = schema.shape as Record<string, z.ZodTypeAny>;
    const strict = schema._def.unknownKeys === 'strict';
    return withDesc({ type: 'object', rules: strict ? ['no unknown fields'] : [], optional: false, children: { kind: 'object', shape, strict } });
  }
  if (schema instanceof z.ZodArray) {
    const rules = [
      ...(schema._def.minLength ? [`at least ${schema._def.minLength.value} items`] : []),
      ...(schema._def.maxLength ? [`at most ${schema._def.maxLength.value} items`] : []),
    ];
    return withDesc({ type: 'list', rules, optional: false, children: { kind: 'array', element: schema.element as z.ZodTypeAny } });
  }
  if (schema instanceof z.ZodUnion) {
    const options = schema.options as z.ZodTypeAny[];
    if (!options.every((o) => o instanceof z.ZodObject)) {
      const types = [...new Set(options.map((o) => describe(o).type))];
      return withDesc({ type: types.join(' or '), rules: [], optional: false });
    }
    const keys = options.flatMap((o) => (o instanceof z.ZodObject ? Object.keys(o.shape as object) : []));
    return withDesc({ type: 'object', rules: [`exactly one of ${keys.map((k) => `\`${k}\``).join(', ')}`, 'no unknown fields'], optional: false, children: { kind: 'union', options } });
  }
  if (schema instanceof z.ZodRecord) return withDesc({ type: 'map', rules: [], optional: false });
  throw new Error(`config docs: no rendering for zod type ${schema.constructor.name}; teach describe() about it`);
}

function walk(schema: z.ZodTypeAny, at: string, out: Walk, required = true): void {
  const d = describe(schema);
  if (at !== '') {
    const doc = d.description ?? FIELD_DOCS[at];
    if (FIELD_DOCS[at] !== undefined) out.usedDocs.add(at);
    out.rows.push({
      path: at,
      type: d.type,
      required: d.defaultValue !== undefined ? `default \`${JSON.stringify(d.defaultValue)}\`` : d.optional || !required ? 'optional' : 'required',
      rules: d.rules,
      description: doc ?? UNDOCUMENTED,
    });
  }
  const c = d.children;
  if (!c) return;
  if (c.kind === 'array') walk(c.element, `${at}[]`, out);
  else if (c.kind === 'object') for (const [k, v] of Object.entries(c.shape)) walk(v, at === '' ? k : `${at}.${k}`, out);
  else {
    // Union of one-key objects: list each branch's fields; the branch itself is optional.
    for (const o of c.options) {
      if (!(o instanceof z.ZodObject)) continue;
      for (const [k, v] of Object.entries(o.shape as Record<string, z.ZodTypeAny>)) walk(v, `${at}.${k}`, out, false);
    }
  }
}

export function fieldTable(schema: z.ZodTypeAny, root: string, out: Walk): string {
  const before = out.rows.length;
  walk(schema, root, out);
  const rows = out.rows.slice(before);
  const esc = (s: string): string => s.replace(/\|/g, '\\|');
  return [
    '| field | type | required / default | rules | description |',
    '|---|---|---|---|---|',
    ...rows.map((r) => `| \`${r.path}\` | ${r.type} | ${r.required} | ${esc(r.rules.join('; ')) || '-'} | ${esc(r.description)} |`),
  ].join('\n');
}

/** Tables for several schemas; refuses descriptions of fields that no schema has. */
export function apiTables(tables: ReadonlyArray<readonly [z.ZodTypeAny, string]>): string[] {
  const used: Walk = { rows: [], usedDocs: new Set() };
  const out = tables.map(([schema, root]) => fieldTable(schema, root, used));
  const stale = Object.keys(FIELD_DOCS).filter((k) => !used.usedDocs.has(k));
  if (stale.length) throw new Error(`config docs: FIELD_DOCS describes fields that no schema has: ${stale.join(', ')}`);
  return out;
}
