/**
 * Writes docs/configuration.md from the sources of truth: the zod schemas in src/api/ (the
 * volumes annotation, CachedImage, the status annotation) and the `parseArgs` option tables
 * of src/cli/commands/*.ts (read with the TypeScript parser, so no command has to change).
 *
 *   npx tsx hack/gen-config-docs.ts           # rewrite docs/configuration.md
 *   npx tsx hack/gen-config-docs.ts --check   # exit 1 when the committed file differs
 *
 * Descriptions live here, keyed by field path or flag, because the schemas carry no
 * `.describe()` yet (a `.describe()` on a schema wins over the text here). A description
 * for a field or flag that no longer exists is an error; a field or flag without one is
 * rendered as UNDOCUMENTED and fails the docs test.
 */
import { readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import ts from 'typescript';
import { z } from 'zod';
import { SpdkVolumeSchema, SpdkVolumesSchema, VOLUMES_ANNOTATION, SLOT_ANNOTATION, STATUS_ANNOTATION, VHOST_SLOT_RESOURCE, SLOT_RE } from '../src/api/volumes.js';
import { API_GROUP, API_VERSION, CachedImageSpecSchema } from '../src/api/cachedimage.js';
import { SlotStatusSchema, VmiStatusSchema } from '../src/api/status.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const OUTPUT = path.join(REPO_ROOT, 'docs', 'configuration.md');
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
  updatedAt: 'RFC 3339 time of the write.',
  vmi: 'The VMI that holds the slot.',
  'vmi.namespace': 'VMI namespace.',
  'vmi.name': 'VMI name.',
  'vmi.uid': 'VMI UID.',
  ready: 'True when every disk of the slot is Ready: PreStartContainer releases the compute container.',
};

/** Flag descriptions, by command then flag name (without `--`). */
const FLAG_DOCS: Record<string, Record<string, string>> = {
  agent: {
    standalone: 'Run driven by files (`--vmis`, `--images`, a `kubevirt-spdk.io/slot` annotation per VMI). Without it the agent runs in cluster mode against the API server.',
    kubeconfig: 'Cluster mode: kubeconfig file. In-cluster config when absent.',
    'pod-resources-socket': 'Cluster mode: the kubelet PodResources API socket, used to map launcher pods to slots.',
    'node-address': 'Cluster mode: the address this node exports migrating disks on (NVMe-oF/TCP, port 4420); default the NODE_IP environment variable. Without it, node-local disks cannot migrate away.',
    vmis: 'Standalone: directory of VMI YAML files: the desired state. Each VMI needs `kubevirt-spdk.io/volumes` and `kubevirt-spdk.io/slot`.',
    images: 'Standalone: file of `CachedImage` documents (YAML stream or a `List`).',
    backend: '`spdk` (spdk_tgt over JSON-RPC) or `qsd` (qemu-storage-daemon, managed by the agent).',
    'vhost-dir': 'Directory where controllers bind their sockets (`<vhost-dir>/<slot>/<disk>`); spdk_tgt\'s `-S`.',
    'state-dir': 'Agent state: journal, `status.json`, per-slot readiness files `slots/<slot>.json`, the development lvstore file.',
    once: 'Reconcile until converged, print a summary, exit 0 when every disk is Ready, 1 otherwise.',
    timeout: 'With `--once`: how long to keep reconciling before giving up.',
    'spdk-socket': 'spdk_tgt JSON-RPC unix socket (`spdk` backend).',
    'bdev-dir': 'qsd only: the directory `bdev: <name>` volumes are served from (`<dir>/<name>`, a file or block device, or the admin\'s link to one). Without it the qsd backend serves no `bdev:` volume.',
    'lvstore-bdev': 'Base bdev of the lvstore (an NVMe namespace bdev in production). Without it the agent creates a sparse aio file `<state-dir>/lvstore.img` of `--lvstore-size`.',
    'lvstore-size': 'Size of the development aio lvstore file; at least 64Mi.',
    'lvstore-block-size': 'Block size (512 or 4096) of the development aio lvstore file, fixed when the file is made and recorded in the state dir (a restart re-creates it exactly). Default: as recorded, else 512 (the guest sees it as its logical block size; distro images expect 512).',
    'socket-owner': '`UID:GID` given to every vhost socket: QEMU in virt-launcher runs as 107:107.',
    'socket-mode': 'Octal mode of every vhost socket.',
    'orphan-grace': 'How long an object that no VMI claims is kept before it is collected.',
    resync: 'Period of the full reconcile (list the backend, compare, repair).',
    'cache-max-size': 'Image cache limit: total virtual size of golden images (quantity). No limit when absent.',
    'cache-max-count': 'Image cache limit: number of golden images. No limit when absent.',
    'metrics-port': 'Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this TCP port (0 = any free port). No metrics server when absent.',
    node: 'Node name written into the status (`node`, and `dataNode` of Ready disks, which is `local` without it). Cluster mode: defaults to `$NODE_NAME`.',
  },
  convert: {
    vmi: 'The VirtualMachineInstance (YAML or JSON) carrying `kubevirt-spdk.io/volumes`.',
    domain: 'libvirt domain XML as virt-launcher defines it (`-` reads stdin).',
    'socket-dir': 'vhost socket directory inside the pod. Default `/var/run/kubevirt-spdk`.',
    help: 'Print usage.',
  },
  'device-plugin': {
    'vhost-dir': 'Host directory holding the slot directories (`<vhost-dir>/slot-NN`).',
    'state-dir': 'The agent\'s state directory: PreStartContainer waits on `slots/<slot>.json`.',
    slots: 'Number of vhost slots this node advertises (`kubevirt-spdk.io/vhost-slot` capacity), 1..1000.',
    'plugin-dir': 'kubelet device plugin directory (kubelet.sock lives there).',
    'health-socket': 'spdk_tgt RPC socket to probe; slots turn Unhealthy when it does not answer. Without it slots are always Healthy.',
    'metrics-port': 'Serve `/metrics` (Prometheus), `/healthz` and `/readyz` over plain HTTP on this TCP port. No metrics server when absent.',
    'prestart-timeout': 'How long PreStartContainer waits for the slot to be ready; must be below kubelet\'s 30 s.',
    help: 'Print usage.',
  },
  sidecar: {
    'socket-dir': 'Hooks directory virt-launcher scans for hook sockets. Default `/var/run/kubevirt-hooks`.',
    'vhost-socket-dir': 'vhost socket directory inside the pod, written into the domain XML. Default `/var/run/kubevirt-spdk`.',
    version: 'Advertise only this Callbacks version (`v1alpha1`, `v1alpha2`, `v1alpha3`); default all, and virt-launcher picks the newest it speaks (`v1alpha3`, with Shutdown, from KubeVirt v1.2.0).',
    help: 'Print usage.',
  },
  plugin: {
    socket: 'Unix socket the Plugin CR names in `spec.domainHooks[].sidecar.socketPath` (KubeVirt requires it under `/var/run/kubevirt-plugin/<plugin>/`, ending in `.sock`).',
    'vhost-socket-dir': 'vhost socket directory inside the pod, written into the domain XML. Default `/var/run/kubevirt-spdk`.',
    help: 'Print usage.',
  },
  doctor: {
    backend: 'Which backend to check: `spdk` or `qsd`.',
    'spdk-socket': 'spdk_tgt JSON-RPC socket to probe.',
    'vhost-dir': 'Vhost socket directory to check (existence, permissions).',
    lvstore: 'Name of the lvstore whose free space is checked.',
    'qemu-uid': 'uid QEMU runs as; sockets must be connectable by it.',
    'qemu-gid': 'gid QEMU runs as.',
    'kubelet-dir': 'kubelet device plugin directory (is kubelet.sock there?).',
    'proc-meminfo': 'Where to read hugepage counters (for tests: a fixture file).',
    'sys-hugepages': 'Where to read per-size hugepage pools.',
    'qsd-binary': 'qemu-storage-daemon binary to look for (qsd backend).',
    kubeconfig: 'kubeconfig for the cluster checks; in-cluster config or KUBECONFIG when absent.',
    'no-kube': 'Skip the cluster checks.',
    namespace: 'Namespace of the kubevirt-spdk deployment.',
    timeout: 'Deadline of each probe.',
    json: 'Print the findings as JSON.',
    help: 'Print usage.',
  },
  'spdk-sim': {
    socket: 'JSON-RPC unix socket to listen on.',
    'vhost-dir': 'Directory for controller sockets (like spdk_tgt `-S`).',
    'state-dir': 'With it, lvstores on aio files survive a kill and restart.',
    cpumask: 'Reported core mask.',
    'poll-interval-ms': 'Simulated poller interval (whole milliseconds).',
    version: 'SPDK release to answer as (methods, fields, messages): `24.01` or `25.09`.',
    help: 'Print usage.',
  },
  status: {
    'state-dir': 'The agent\'s state directory (reads `status.json`).',
    json: 'Print the status as JSON.',
    help: 'Print usage.',
  },
  webhook: {
    'tls-cert': 'Serving certificate (PEM).',
    'tls-key': 'Serving key (PEM).',
    'sidecar-image': 'Image of the hook sidecar injected into virt-launcher pods.',
    images: 'File of `CachedImage` documents. Without it the catalog comes from the cluster (in-cluster config or KUBECONFIG).',
    host: 'Listen address.',
    port: 'HTTPS port.',
    'max-body-bytes': 'Largest AdmissionReview body accepted.',
    'hook-sidecar': 'Hook sidecar injected into SPDK VMIs: `all` (lists every Callbacks version; KubeVirt picks `v1alpha3` with Shutdown from v1.2.0, `v1alpha2` before), `v1alpha1`/`v1alpha2`/`v1alpha3` (pinned), or `none` (KubeVirt >= v1.9 with the Plugin CR, see docs/kubevirt-versions.md).',
    'metrics-port': 'Plain-HTTP port of `/metrics`, `/healthz` and `/readyz` (0 = any free port). Never served on `--port`, which the admission Service exposes to the whole cluster.',
    'metrics-host': 'Address the metrics listener binds.',
    'ready-nodes': 'Also run the one cluster-wide writer of `CachedImage.status.readyNodes` (counted from the NodeImageCaches); replicas elect a leader on the Lease `kubevirt-spdk-ready-nodes`, so one writes at a time.',
    'lease-namespace': 'Namespace of that Lease (the webhook\'s own).',
    help: 'Print usage.',
  },
};

// ---------------------------------------------------------------- zod schemas

export interface FieldRow {
  path: string;
  type: string;
  required: string;
  rules: string[];
  description: string;
}

type Walk = { rows: FieldRow[]; usedDocs: Set<string> };

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
  throw new Error(`gen-config-docs: no rendering for zod type ${schema.constructor.name}; teach describe() about it`);
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

function fieldTable(schema: z.ZodTypeAny, root: string, out: Walk): string {
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

// ---------------------------------------------------------------- CLI options

export interface FlagRow {
  command: string;
  flag: string;
  type: string;
  short?: string;
  defaultValue?: string;
  description: string;
}

/** Evaluates the small constant expressions used as option defaults. */
async function evalDefault(expr: ts.Expression, file: ts.SourceFile, fileName: string): Promise<string> {
  const importOf = async (name: string): Promise<unknown> => {
    for (const st of file.statements) {
      if (!ts.isImportDeclaration(st) || !st.importClause?.namedBindings || !ts.isNamedImports(st.importClause.namedBindings)) continue;
      const el = st.importClause.namedBindings.elements.find((e) => e.name.text === name);
      if (!el) continue;
      const spec = (st.moduleSpecifier as ts.StringLiteral).text.replace(/\.js$/, '.ts');
      const mod = (await import(pathToFileURL(path.resolve(path.dirname(fileName), spec)).href)) as Record<string, unknown>;
      return mod[(el.propertyName ?? el.name).text];
    }
    throw new Error(`${fileName}: default uses ${name}, which is not imported`);
  };
  const ev = async (e: ts.Expression): Promise<unknown> => {
    if (ts.isStringLiteral(e) || ts.isNoSubstitutionTemplateLiteral(e)) return e.text;
    if (ts.isNumericLiteral(e)) return Number(e.text.replace(/_/g, ''));
    if (e.kind === ts.SyntaxKind.TrueKeyword) return true;
    if (e.kind === ts.SyntaxKind.FalseKeyword) return false;
    if (ts.isIdentifier(e)) return importOf(e.text);
    if (ts.isParenthesizedExpression(e)) return ev(e.expression);
    if (ts.isTemplateExpression(e)) {
      let s = e.head.text;
      for (const span of e.templateSpans) s += String(await ev(span.expression)) + span.literal.text;
      return s;
    }
    if (ts.isBinaryExpression(e)) {
      const [l, r] = [Number(await ev(e.left)), Number(await ev(e.right))];
      if (e.operatorToken.kind === ts.SyntaxKind.SlashToken) return l / r;
      if (e.operatorToken.kind === ts.SyntaxKind.AsteriskToken) return l * r;
    }
    if (ts.isCallExpression(e) && ts.isIdentifier(e.expression) && e.expression.text === 'String' && e.arguments[0]) return String(await ev(e.arguments[0]));
    throw new Error(`${fileName}: cannot evaluate option default \`${e.getText(file)}\`; teach evalDefault about it`);
  };
  return String(await ev(expr));
}

/** The options object of every `parseArgs({ options: {...} })` call in a command file. */
export async function commandFlags(command: string, fileName: string): Promise<FlagRow[]> {
  const text = await readFile(fileName, 'utf8');
  const file = ts.createSourceFile(fileName, text, ts.ScriptTarget.ES2022, true);
  const found: ts.ObjectLiteralExpression[] = [];
  const visit = (n: ts.Node): void => {
    if (ts.isCallExpression(n) && ts.isIdentifier(n.expression) && n.expression.text === 'parseArgs') {
      const arg = n.arguments[0];
      if (arg && ts.isObjectLiteralExpression(arg)) {
        for (const p of arg.properties) {
          if (ts.isPropertyAssignment(p) && ts.isIdentifier(p.name) && p.name.text === 'options' && ts.isObjectLiteralExpression(p.initializer)) found.push(p.initializer);
        }
      }
    }
    ts.forEachChild(n, visit);
  };
  visit(file);
  if (found.length === 0) throw new Error(`${fileName}: no parseArgs({ options: {...} }) call; the generator cannot read this command's flags`);
  const rows: FlagRow[] = [];
  for (const options of found) {
    for (const p of options.properties) {
      if (!ts.isPropertyAssignment(p) || !ts.isObjectLiteralExpression(p.initializer)) throw new Error(`${fileName}: option ${p.getText(file)} is not a literal`);
      const flag = ts.isStringLiteral(p.name) || ts.isIdentifier(p.name) ? p.name.text : p.name.getText(file);
      const row: FlagRow = { command, flag, type: 'string', description: FLAG_DOCS[command]?.[flag] ?? UNDOCUMENTED };
      for (const q of p.initializer.properties) {
        if (!ts.isPropertyAssignment(q) || !ts.isIdentifier(q.name)) continue;
        if (q.name.text === 'type' && ts.isStringLiteral(q.initializer)) row.type = q.initializer.text;
        if (q.name.text === 'short' && ts.isStringLiteral(q.initializer)) row.short = q.initializer.text;
        if (q.name.text === 'default') row.defaultValue = await evalDefault(q.initializer, file, fileName);
      }
      rows.push(row);
    }
  }
  return rows;
}

export async function allCommandFlags(): Promise<Map<string, FlagRow[]>> {
  const dir = path.join(REPO_ROOT, 'src', 'cli', 'commands');
  const files = (await readdir(dir)).filter((f) => f.endsWith('.ts')).sort();
  const out = new Map<string, FlagRow[]>();
  for (const f of files) {
    const command = f.replace(/\.ts$/, '');
    out.set(command, await commandFlags(command, path.join(dir, f)));
  }
  return out;
}

// ---------------------------------------------------------------- document

export async function renderConfigurationDoc(): Promise<string> {
  const used: Walk = { rows: [], usedDocs: new Set() };
  const volumesTable = fieldTable(SpdkVolumeSchema, 'volumes[]', used);
  const imageTable = fieldTable(CachedImageSpecSchema, 'spec', used);
  const statusTable = fieldTable(VmiStatusSchema, '', used);
  const slotTable = fieldTable(SlotStatusSchema, '', used);
  const stale = Object.keys(FIELD_DOCS).filter((k) => !used.usedDocs.has(k));
  if (stale.length) throw new Error(`gen-config-docs: FIELD_DOCS describes fields that no schema has: ${stale.join(', ')}`);

  const flags = await allCommandFlags();
  const staleFlags = Object.entries(FLAG_DOCS).flatMap(([cmd, m]) => Object.keys(m).filter((f) => !(flags.get(cmd) ?? []).some((r) => r.flag === f)).map((f) => `${cmd} --${f}`));
  if (staleFlags.length) throw new Error(`gen-config-docs: FLAG_DOCS describes flags that no command has: ${staleFlags.join(', ')}`);

  const volMin = SpdkVolumesSchema._def.schema._def.minLength?.value;
  const volMax = SpdkVolumesSchema._def.schema._def.maxLength?.value;
  const cli = [...flags.entries()].map(([command, rows]) =>
    [
      `### \`kubevirt-spdk ${command}\``,
      '',
      '| flag | type | default | description |',
      '|---|---|---|---|',
      ...rows.map((r) => `| \`--${r.flag}\`${r.short ? ` / \`-${r.short}\`` : ''} | ${r.type} | ${r.defaultValue === undefined ? '-' : `\`${r.defaultValue}\``} | ${r.description.replace(/\|/g, '\\|')} |`),
    ].join('\n'),
  );

  return `<!-- Generated by hack/gen-config-docs.ts from src/api/ and src/cli/commands/. Do not edit: run \`npx tsx hack/gen-config-docs.ts\`. -->
# Configuration reference

Every table below is generated from the code that enforces it (the zod schemas in
\`src/api/\`, the option tables of \`src/cli/commands/\`), and a unit test fails when this file
and the code disagree.

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

\`kubevirt-spdk <command> --help\` prints the usage of one command. Quantities are Kubernetes
quantities (\`64Gi\`), durations Go durations (\`30s\`, \`5m\`).

${cli.join('\n\n')}
`;
}

async function main(): Promise<number> {
  const doc = await renderConfigurationDoc();
  if (process.argv.includes('--check')) {
    const current = await readFile(OUTPUT, 'utf8').catch(() => '');
    if (current !== doc) {
      process.stderr.write(`${path.relative(REPO_ROOT, OUTPUT)} is out of date: run npx tsx hack/gen-config-docs.ts\n`);
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
