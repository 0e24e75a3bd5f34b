/**
 * A small stand-in for the Kubernetes API server, on 127.0.0.1 over plain HTTP: list and
 * watch (chunked JSON lines, resourceVersion, label and field selectors), get, create, PUT,
 * PATCH (merge, JSON and strategic patches; content type and body recorded) and the status
 * subresource of CRDs; any resource path works the same (VMIs, pods, CachedImages,
 * NodeImageCaches, coordination.k8s.io Leases, whose PUT is a compare-and-swap on
 * resourceVersion). Test controls: expire watches with a 410 ERROR event, drop every
 * connection, and go away (stop listening) and come back on the same port.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { randomUUID } from 'node:crypto';
import { KubeConfig } from '@kubernetes/client-node';
import jsonpatch from 'fast-json-patch';
import type { Operation } from 'fast-json-patch';

export type Obj = Record<string, unknown> & { metadata?: Record<string, unknown> };

export interface RecordedPatch {
  resource: string;
  namespace?: string;
  name: string;
  subresource?: string;
  contentType: string;
  body: unknown;
}

interface Target {
  /** `<group>/<version>/<plural>`, group empty for the core API: `/v1/pods`. */
  resource: string;
  namespace?: string;
  name?: string;
  subresource?: string;
}

interface HistoryEntry {
  rv: number;
  resource: string;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  obj: Obj;
  prev?: Obj;
}

interface Watcher {
  resource: string;
  namespace?: string;
  labels: Array<[string, string]>;
  fields: Array<[string, string]>;
  res: http.ServerResponse;
}

/** CRD resources whose status is only written through `/status`, as the real server does. */
const STATUS_SUBRESOURCE = new Set(['kubevirt-spdk.io/v1alpha1/cachedimages', 'kubevirt-spdk.io/v1alpha1/nodeimagecaches']);

export const resourceKey = (apiVersion: string, plural: string): string => (apiVersion.includes('/') ? `${apiVersion}/${plural}` : `/${apiVersion}/${plural}`);

function parsePath(p: string): Target | undefined {
  const s = p.split('/').filter(Boolean);
  let prefix: string;
  let rest: string[];
  if (s[0] === 'api') {
    prefix = `/${s[1] ?? ''}`;
    rest = s.slice(2);
  } else if (s[0] === 'apis') {
    prefix = `${s[1] ?? ''}/${s[2] ?? ''}`;
    rest = s.slice(3);
  } else return undefined;
  let namespace: string | undefined;
  if (rest[0] === 'namespaces' && rest.length >= 3) {
    namespace = rest[1];
    rest = rest.slice(2);
  }
  const [plural, name, subresource] = rest;
  if (!plural) return undefined;
  return { resource: `${prefix}/${plural}`, ...(namespace ? { namespace } : {}), ...(name ? { name } : {}), ...(subresource ? { subresource } : {}) };
}

function parseSelector(s: string | null): Array<[string, string]> {
  if (!s) return [];
  return s.split(',').map((term) => {
    const [k, v] = term.split('=');
    return [k ?? '', v ?? ''];
  });
}

function fieldValue(obj: Obj, path: string): unknown {
  return path.split('.').reduce<unknown>((o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), obj);
}

const meta = (o: Obj): Record<string, unknown> => (o.metadata ??= {});
const clone = <T>(v: T): T => structuredClone(v);

/** RFC 7386 JSON merge patch. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return clone(patch);
  const out: Record<string, unknown> = target && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(patch as Record<string, unknown>)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

export class FakeApiServer {
  private server: http.Server | undefined;
  private readonly sockets = new Set<Socket>();
  private readonly store = new Map<string, Map<string, Obj>>();
  private readonly history: HistoryEntry[] = [];
  private readonly watchers = new Set<Watcher>();
  private rv = 100;
  /** Watches from a resourceVersion older than this get 410 Gone. */
  private compactedRv = 0;
  port = 0;
  readonly patches: RecordedPatch[] = [];
  /** Every request as `METHOD path?query`, for assertions on what the client did. */
  readonly requests: string[] = [];

  static async start(): Promise<FakeApiServer> {
    const s = new FakeApiServer();
    await s.listen(0);
    return s;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** A client configuration that talks to this server (plain HTTP, no credentials). */
  kubeConfig(user = 'test'): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'fake', server: this.url, skipTLSVerify: true }],
      users: [{ name: user }],
      contexts: [{ name: 'fake', cluster: 'fake', user }],
      currentContext: 'fake',
    });
    return kc;
  }

  private listen(port: number): Promise<void> {
    const server = http.createServer((req, res) => this.handle(req, res));
    server.on('connection', (sock) => {
      this.sockets.add(sock);
      sock.on('close', () => this.sockets.delete(sock));
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        this.port = (server.address() as AddressInfo).port;
        resolve();
      });
    });
  }

  /** Closes every connection (watches included); clients reconnect from their resourceVersion. */
  dropConnections(): void {
    for (const w of this.watchers) w.res.destroy();
    this.watchers.clear();
    for (const s of this.sockets) s.destroy();
  }

  /** History is compacted: every open watch gets a 410 ERROR event and ends, and must relist. */
  expireWatches(): void {
    this.compactedRv = this.rv;
    for (const w of this.watchers) {
      w.res.end(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'Expired', code: 410, message: 'too old resource version' } })}\n`);
    }
    this.watchers.clear();
  }

  /** Stops listening and drops every connection, until `comeBack()`. */
  async goAway(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    this.dropConnections();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  async comeBack(): Promise<void> {
    await this.listen(this.port);
  }

  async close(): Promise<void> {
    await this.goAway();
  }

  // ---- object store (also used by tests to play the rest of the cluster) ----------------------

  private bucket(resource: string): Map<string, Obj> {
    let b = this.store.get(resource);
    if (!b) this.store.set(resource, (b = new Map()));
    return b;
  }

  private record(resource: string, type: HistoryEntry['type'], obj: Obj, prev?: Obj): void {
    const entry: HistoryEntry = { rv: this.rv, resource, type, obj: clone(obj), ...(prev ? { prev: clone(prev) } : {}) };
    this.history.push(entry);
    for (const w of this.watchers) this.send(w, entry);
  }

  private bump(obj: Obj): void {
    this.rv++;
    meta(obj).resourceVersion = String(this.rv);
  }

  /** Creates or replaces an object as another cluster component would. */
  put(resource: string, obj: Obj): Obj {
    const o = clone(obj);
    const m = meta(o);
    const key = `${(m.namespace as string | undefined) ?? ''}/${String(m.name)}`;
    const b = this.bucket(resource);
    const prev = b.get(key);
    m.uid ??= (prev?.metadata?.uid as string | undefined) ?? randomUUID();
    m.creationTimestamp ??= (prev?.metadata?.creationTimestamp as string | undefined) ?? new Date().toISOString();
    this.bump(o);
    b.set(key, o);
    this.record(resource, prev ? 'MODIFIED' : 'ADDED', o, prev);
    return clone(o);
  }

  get(resource: string, name: string, namespace?: string): Obj | undefined {
    const o = this.store.get(resource)?.get(`${namespace ?? ''}/${name}`);
    return o ? clone(o) : undefined;
  }

  list(resource: string): Obj[] {
    return [...(this.store.get(resource)?.values() ?? [])].map(clone);
  }

  remove(resource: string, name: string, namespace?: string): boolean {
    const b = this.bucket(resource);
    const key = `${namespace ?? ''}/${name}`;
    const o = b.get(key);
    if (!o) return false;
    b.delete(key);
    this.bump(o);
    this.record(resource, 'DELETED', o);
    return true;
  }

  // ---- HTTP ------------------------------------------------------------------------------------

  private matches(w: Pick<Watcher, 'namespace' | 'labels' | 'fields'>, o: Obj | undefined): boolean {
    if (!o) return false;
    const m = o.metadata ?? {};
    if (w.namespace !== undefined && m.namespace !== w.namespace) return false;
    const labels = (m.labels as Record<string, string> | undefined) ?? {};
    if (!w.labels.every(([k, v]) => labels[k] === v)) return false;
    return w.fields.every(([k, v]) => String(fieldValue(o, k) ?? '') === v);
  }

  private send(w: Watcher, e: HistoryEntry): void {
    if (e.resource !== w.resource) return;
    const now = this.matches(w, e.obj);
    const before = e.type === 'MODIFIED' && this.matches(w, e.prev);
    let type: HistoryEntry['type'] | undefined;
    // A change that moves an object into or out of the selector is an ADDED or DELETED for this watch.
    if (e.type === 'DELETED') type = now ? 'DELETED' : undefined;
    else if (now) type = before ? 'MODIFIED' : 'ADDED';
    else if (before) type = 'DELETED';
    if (type) w.res.write(`${JSON.stringify({ type, object: e.obj })}\n`);
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x');
    this.requests.push(`${req.method ?? ''} ${url.pathname}${url.search}`);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      try {
        this.route(req, res, url, Buffer.concat(chunks).toString('utf8'));
      } catch (e) {
        this.status(res, 500, 'InternalError', (e as Error).message);
      }
    });
  }

  private status(res: http.ServerResponse, code: number, reason: string, message: string): void {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', reason, message, code }));
  }

  private json(res: http.ServerResponse, code: number, body: unknown): void {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  }

  private route(req: http.IncomingMessage, res: http.ServerResponse, url: URL, text: string): void {
    const t = parsePath(url.pathname);
    if (!t) return this.status(res, 404, 'NotFound', `no route ${url.pathname}`);
    const method = req.method ?? 'GET';
    if (!t.name) {
      if (method === 'GET' && url.searchParams.get('watch') === 'true') return this.watch(t, url, res);
      if (method === 'GET') return this.listHttp(t, url, res);
      if (method === 'POST') return this.create(t, text, res);
      return this.status(res, 405, 'MethodNotAllowed', method);
    }
    const key = `${t.namespace ?? ''}/${t.name}`;
    const existing = this.store.get(t.resource)?.get(key);
    if (method === 'GET') return existing ? this.json(res, 200, existing) : this.status(res, 404, 'NotFound', `${t.resource} ${key} not found`);
    if (method === 'DELETE') return this.remove(t.resource, t.name, t.namespace) ? this.json(res, 200, existing) : this.status(res, 404, 'NotFound', key);
    if (!existing) return this.status(res, 404, 'NotFound', `${t.resource} ${key} not found`);
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      return this.status(res, 400, 'BadRequest', 'body is not JSON');
    }
    let next: Obj;
    if (method === 'PATCH') {
      const contentType = String(req.headers['content-type'] ?? '');
      this.patches.push({ resource: t.resource, ...(t.namespace ? { namespace: t.namespace } : {}), name: t.name, ...(t.subresource ? { subresource: t.subresource } : {}), contentType, body });
      if (contentType.startsWith('application/json-patch+json')) next = jsonpatch.applyPatch(clone(existing), body as Operation[], false, false).newDocument;
      else if (contentType.startsWith('application/merge-patch+json') || contentType.startsWith('application/strategic-merge-patch+json'))
        next = mergePatch(existing, body) as Obj;
      else return this.status(res, 415, 'UnsupportedMediaType', `content type ${contentType} is not a patch type`);
    } else if (method === 'PUT') {
      const rv = (body as Obj).metadata?.resourceVersion;
      if (rv !== undefined && rv !== existing.metadata?.resourceVersion) return this.status(res, 409, 'Conflict', `resourceVersion ${String(rv)} is stale`);
      next = body as Obj;
    } else return this.status(res, 405, 'MethodNotAllowed', method);
    if (STATUS_SUBRESOURCE.has(t.resource)) {
      // The main resource ignores status; the /status subresource changes only status.
      next = t.subresource === 'status' ? { ...clone(existing), status: next.status } : { ...next, ...(existing.status ? { status: existing.status } : {}) };
      if (t.subresource !== 'status' && !existing.status) delete next.status;
    }
    meta(next).uid = existing.metadata?.uid;
    meta(next).name = t.name;
    if (t.namespace) meta(next).namespace = t.namespace;
    this.json(res, 200, this.put(t.resource, next));
  }

  private listHttp(t: Target, url: URL, res: http.ServerResponse): void {
    const w = { namespace: t.namespace, labels: parseSelector(url.searchParams.get('labelSelector')), fields: parseSelector(url.searchParams.get('fieldSelector')) };
    const items = this.list(t.resource).filter((o) => this.matches(w, o));
    this.json(res, 200, { apiVersion: 'v1', kind: 'List', metadata: { resourceVersion: String(this.rv) }, items });
  }

  private create(t: Target, text: string, res: http.ServerResponse): void {
    let body: Obj;
    try {
      body = JSON.parse(text) as Obj;
    } catch {
      return this.status(res, 400, 'BadRequest', 'body is not JSON');
    }
    const m = meta(body);
    if (t.namespace) m.namespace = t.namespace;
    if (!m.name && typeof m.generateName === 'string') m.name = `${m.generateName}${randomUUID().slice(0, 5)}`;
    if (!m.name) return this.status(res, 422, 'Invalid', 'metadata.name: Required value');
    if (this.store.get(t.resource)?.has(`${t.namespace ?? ''}/${String(m.name)}`)) return this.status(res, 409, 'AlreadyExists', `${String(m.name)} already exists`);
    if (STATUS_SUBRESOURCE.has(t.resource)) delete body.status;
    this.json(res, 201, this.put(t.resource, body));
  }

  private watch(t: Target, url: URL, res: http.ServerResponse): void {
    const from = Number(url.searchParams.get('resourceVersion') ?? '0') || 0;
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    // As the real server does: the client's watch starts once the headers arrive.
    res.flushHeaders();
    const w: Watcher = {
      resource: t.resource,
      ...(t.namespace ? { namespace: t.namespace } : {}),
      labels: parseSelector(url.searchParams.get('labelSelector')),
      fields: parseSelector(url.searchParams.get('fieldSelector')),
      res,
    };
    if (from < this.compactedRv) {
      res.end(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'Expired', code: 410, message: `too old resource version: ${from} (${this.compactedRv})` } })}\n`);
      return;
    }
    for (const e of this.history) if (e.rv > from) this.send(w, e);
    this.watchers.add(w);
    res.on('close', () => this.watchers.delete(w));
  }
}
