import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../../helpers/cli.js';
import { API_GROUP } from '../../../src/api/cachedimage.js';
import { CACHEDIMAGE_PLURAL, KUBEVIRT_GROUP, LEASE_GROUP, NODEIMAGECACHE_PLURAL, VMI_PLURAL } from '../../../src/kube/api.js';
import { READY_NODES_LEASE } from '../../../src/controller/ready-nodes.js';
import { VMIM_PLURAL } from '../../../src/kube/migration.js';

/**
 * Least privilege, derived from the code: every Kubernetes call the agent, the webhook and the
 * readyNodes controller make (client methods on the CustomObjects/CoreV1/CoordinationV1 APIs,
 * called directly or through KubeApi, and the informers' watches) gives the verbs each needs;
 * the roles in manifests/rbac must grant exactly those, nothing broader (and nothing missing).
 */

const CONSTANTS: Record<string, string> = {
  KUBEVIRT_GROUP,
  API_GROUP,
  VMI_PLURAL,
  VMIM_PLURAL,
  CACHEDIMAGE_PLURAL,
  NODEIMAGECACHE_PLURAL,
};

/** Client method -> verb (and subresource). */
const CLIENT_METHODS: Record<string, { verb: string; sub?: string; core?: string; group?: string }> = {
  listClusterCustomObject: { verb: 'list' },
  listNamespacedCustomObject: { verb: 'list' },
  getClusterCustomObject: { verb: 'get' },
  getNamespacedCustomObject: { verb: 'get' },
  createClusterCustomObject: { verb: 'create' },
  createNamespacedCustomObject: { verb: 'create' },
  patchNamespacedCustomObject: { verb: 'patch' },
  patchClusterCustomObject: { verb: 'patch' },
  patchClusterCustomObjectStatus: { verb: 'patch', sub: 'status' },
  patchNamespacedCustomObjectStatus: { verb: 'patch', sub: 'status' },
  deleteNamespacedCustomObject: { verb: 'delete' },
  deleteClusterCustomObject: { verb: 'delete' },
  listPodForAllNamespaces: { verb: 'list', core: 'pods' },
  listNode: { verb: 'list', core: 'nodes' },
  createNamespacedEvent: { verb: 'create', core: 'events' },
  readNamespacedLease: { verb: 'get', core: 'leases', group: LEASE_GROUP },
  createNamespacedLease: { verb: 'create', core: 'leases', group: LEASE_GROUP },
  replaceNamespacedLease: { verb: 'update', core: 'leases', group: LEASE_GROUP },
};

type Grant = string; // "<group>/<resource>:<verb>", core group ""

function callsIn(text: string): Grant[] {
  const out: Grant[] = [];
  const re = /\.(\w+)\(\s*\{([^}]*)\}/g;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const method = CLIENT_METHODS[m[1] ?? ''];
    if (!method) continue;
    if (method.core) {
      out.push(`${method.group ?? ''}/${method.core}:${method.verb}`);
      continue;
    }
    const args = m[2] ?? '';
    const group = CONSTANTS[/group:\s*(\w+)/.exec(args)?.[1] ?? ''];
    const plural = CONSTANTS[/plural:\s*(\w+)/.exec(args)?.[1] ?? ''];
    if (!group || !plural) throw new Error(`cannot resolve group/plural of ${m[0]}`);
    out.push(`${group}/${plural}${method.sub ? `/${method.sub}` : ''}:${method.verb}`);
  }
  return out;
}

/** KubeApi method name -> what its body calls. */
async function kubeApiMethods(): Promise<Map<string, Grant[]>> {
  const text = await readFile(path.join(REPO_ROOT, 'src/kube/api.ts'), 'utf8');
  const body = text.slice(text.indexOf('export class KubeApi'));
  const starts = [...body.matchAll(/^ {2}(?:async )?(\w+)(?: = |\()/gm)].map((m) => ({ name: m[1] ?? '', at: m.index ?? 0 }));
  const out = new Map<string, Grant[]>();
  starts.forEach((s, i) => out.set(s.name, callsIn(body.slice(s.at, starts[i + 1]?.at ?? body.length))));
  return out;
}

const WATCH_PATHS: Record<string, Grant> = {
  vmis: `${KUBEVIRT_GROUP}/${VMI_PLURAL}:watch`,
  pods: '/pods:watch',
  cachedImages: `${API_GROUP}/${CACHEDIMAGE_PLURAL}:watch`,
  nodeImageCaches: `${API_GROUP}/${NODEIMAGECACHE_PLURAL}:watch`,
  nodes: '/nodes:watch',
};

/** Grants a component needs: direct client calls, KubeApi methods it calls, and informer watches. */
async function needed(files: string[]): Promise<Set<Grant>> {
  const api = await kubeApiMethods();
  const out = new Set<Grant>();
  for (const f of files) {
    const text = await readFile(path.join(REPO_ROOT, f), 'utf8');
    if (!f.endsWith('src/kube/api.ts')) for (const g of callsIn(text)) out.add(g);
    for (const m of text.matchAll(/\bapi\.(\w+)\b/g)) for (const g of api.get(m[1] ?? '') ?? []) out.add(g);
    for (const m of text.matchAll(/path:\s*paths\.(\w+)/g)) {
      const g = WATCH_PATHS[m[1] ?? ''];
      if (!g) throw new Error(`unknown watch path ${m[1]}`);
      out.add(g);
    }
  }
  return out;
}

type Rule = { apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] };

async function roleRules(file: string, role: string, kind: 'ClusterRole' | 'Role'): Promise<Rule[]> {
  const docs = parseAllDocuments(await readFile(path.join(REPO_ROOT, 'manifests/rbac', file), 'utf8')).map((d) => d.toJS() as { kind: string; metadata: { name: string }; rules?: Rule[] });
  const r = docs.find((d) => d.kind === kind && d.metadata.name === role);
  if (!r) throw new Error(`no ${kind} ${role} in ${file}`);
  return r.rules ?? [];
}

async function granted(file: string, role: string, kind: 'ClusterRole' | 'Role' = 'ClusterRole'): Promise<Set<Grant>> {
  const r = { rules: await roleRules(file, role, kind) };
  const out = new Set<Grant>();
  for (const rule of r.rules ?? []) {
    for (const g of rule.apiGroups) for (const res of rule.resources) for (const v of rule.verbs) out.add(`${g}/${res}:${v}`);
  }
  return out;
}

const sorted = (s: Set<string>): string[] => [...s].sort();

describe('RBAC is exactly what the code calls', () => {
  it('the node agent (cluster mode + migration)', async () => {
    const files = (await readdir(path.join(REPO_ROOT, 'src/kube'))).filter((f) => f.endsWith('.ts')).map((f) => `src/kube/${f}`);
    const need = await needed(files);
    // Sanity: the derivation sees the calls it must (a broken regex must not pass as "nothing needed").
    expect(need.has(`${KUBEVIRT_GROUP}/${VMI_PLURAL}:patch`)).toBe(true);
    expect(need.has(`${KUBEVIRT_GROUP}/${VMIM_PLURAL}:delete`)).toBe(true);
    expect(sorted(await granted('agent.yaml', 'kubevirt-spdk-node'))).toEqual(sorted(need));
  });

  it('the webhook', async () => {
    const need = await needed(['webhooks/catalog.ts']);
    expect(sorted(await granted('webhook.yaml', 'kubevirt-spdk-webhook'))).toEqual(sorted(need));
  });

  it('the readyNodes controller (run by the webhook replicas): cluster-wide reads and readyNodes, the Lease only in its namespace', async () => {
    const need = await needed(['src/controller/ready-nodes.ts', 'src/controller/leader.ts']);
    expect(need.has(`${API_GROUP}/${CACHEDIMAGE_PLURAL}/status:patch`)).toBe(true);
    expect(need.has(`${LEASE_GROUP}/leases:update`)).toBe(true);
    const cluster = await granted('ready-nodes.yaml', 'kubevirt-spdk-ready-nodes');
    const namespaced = await granted('ready-nodes.yaml', 'kubevirt-spdk-ready-nodes', 'Role');
    expect(sorted(new Set([...cluster, ...namespaced]))).toEqual(sorted(need));
    expect(sorted(cluster).filter((g) => g.startsWith(`${LEASE_GROUP}/`))).toEqual([]);
    expect(sorted(namespaced).every((g) => g.startsWith(`${LEASE_GROUP}/leases:`))).toBe(true);
    // Reading and renewing are limited to the one Lease (create cannot be: the name does not exist yet).
    for (const rule of await roleRules('ready-nodes.yaml', 'kubevirt-spdk-ready-nodes', 'Role')) {
      if (rule.verbs.some((v) => v !== 'create')) expect(rule.resourceNames).toEqual([READY_NODES_LEASE]);
    }
  });

  it('no wildcard, no secrets, no cluster-wide write of core objects but Events', async () => {
    for (const [file, role] of [['agent.yaml', 'kubevirt-spdk-node'], ['webhook.yaml', 'kubevirt-spdk-webhook']] as const) {
      const g = sorted(await granted(file, role));
      expect(g.filter((x) => x.includes('*'))).toEqual([]);
      expect(g.filter((x) => x.startsWith('/secrets') || x.startsWith('/nodes'))).toEqual([]);
      expect(g.filter((x) => x.startsWith('/') && !/:(get|list|watch)$/.test(x))).toEqual(file === 'agent.yaml' ? ['/events:create'] : []);
    }
  });
});

type Container = {
  name: string;
  securityContext?: { privileged?: boolean; allowPrivilegeEscalation?: boolean; readOnlyRootFilesystem?: boolean; runAsNonRoot?: boolean; seccompProfile?: { type: string }; capabilities?: { add?: string[]; drop?: string[] } };
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean; subPath?: string }>;
  ports?: Array<{ name: string; containerPort: number }>;
};
type Workload = { kind: string; metadata: { name: string }; spec: { template: { spec: { securityContext?: Container['securityContext']; containers: Container[] } } } };

async function workloads(file: string): Promise<Workload[]> {
  return parseAllDocuments(await readFile(path.join(REPO_ROOT, 'manifests', file), 'utf8'))
    .map((d) => d.toJS() as Workload)
    .filter((d) => d.kind === 'DaemonSet' || d.kind === 'Deployment');
}

describe('pod security', () => {
  it('every container but spdk_tgt: no privilege escalation, read-only root, RuntimeDefault seccomp, all capabilities dropped', async () => {
    const all = [...(await workloads('node/daemonset.yaml')), ...(await workloads('webhook/deployment.yaml'))];
    const seen: string[] = [];
    for (const w of all) {
      for (const c of w.spec.template.spec.containers) {
        seen.push(c.name);
        // spdk_tgt needs hugepages, /dev and vfio: privileged, and said so in the docs.
        if (c.name === 'spdk-tgt') {
          expect(c.securityContext?.privileged).toBe(true);
          continue;
        }
        const sc = c.securityContext ?? {};
        expect(sc.allowPrivilegeEscalation, c.name).toBe(false);
        expect(sc.readOnlyRootFilesystem, c.name).toBe(true);
        expect(sc.seccompProfile?.type ?? w.spec.template.spec.securityContext?.seccompProfile?.type, c.name).toBe('RuntimeDefault');
        expect(sc.capabilities?.drop, c.name).toEqual(['ALL']);
      }
    }
    expect(seen.sort()).toEqual(['agent', 'device-plugin', 'spdk-tgt', 'webhook']);
  });

  it('the agent keeps one capability (CHOWN, for the vhost sockets); the device plugin none, and the state read-only but the vhost dir', async () => {
    const [ds] = await workloads('node/daemonset.yaml');
    const c = (n: string): Container => ds!.spec.template.spec.containers.find((x) => x.name === n)!;
    expect(c('agent').securityContext?.capabilities?.add).toEqual(['CHOWN']);
    expect(c('device-plugin').securityContext?.capabilities?.add).toBeUndefined();
    const mounts = c('device-plugin').volumeMounts ?? [];
    expect(mounts.filter((m) => m.name === 'state')).toEqual([
      { name: 'state', mountPath: '/var/lib/kubevirt-spdk', readOnly: true },
      { name: 'state', mountPath: '/var/lib/kubevirt-spdk/vhost', subPath: 'vhost' },
    ]);
  });

  it('the webhook runs as non-root; its metrics are on their own port, which the admission Service does not expose', async () => {
    const docs = parseAllDocuments(await readFile(path.join(REPO_ROOT, 'manifests/webhook/deployment.yaml'), 'utf8')).map((d) => d.toJS() as { kind: string; spec: { ports?: Array<{ targetPort: string }>; ingress?: unknown[] } });
    const [dep] = await workloads('webhook/deployment.yaml');
    const c = dep!.spec.template.spec.containers[0]!;
    expect(c.securityContext?.runAsNonRoot).toBe(true);
    expect(c.ports?.map((p) => p.name).sort()).toEqual(['https', 'metrics']);
    expect(docs.find((d) => d.kind === 'Service')?.spec.ports?.map((p) => p.targetPort)).toEqual(['https']);
    expect(docs.some((d) => d.kind === 'NetworkPolicy')).toBe(true);
  });
});
