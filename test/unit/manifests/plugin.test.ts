/**
 * manifests/kubevirt/plugin.yaml (the KubeVirt >= v1.9 Plugin CR path) has no API server here:
 * its objects are checked against the rules KubeVirt and Kubernetes apply to them (KubeVirt's
 * Plugin socketPath admission policy, the plugin socket volume's subPath rule, the Pod schema
 * for the injected container) and against the pieces they must agree with (the CLI's default
 * socket, the webhook's label, the kustomization's image).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { Pod } from 'kubernetes-models/v1/Pod';
import type { IContainer } from 'kubernetes-models/v1/Container';
import { REPO_ROOT } from '../../helpers/cli.js';
import { DEFAULT_PLUGIN_SOCKET, PLUGIN_NAME, checkPluginSocketPath } from '../../../src/plugin/server.js';
import { SPDK_DISKS_LABEL } from '../../../webhooks/mutate.js';

type Obj = { apiVersion: string; kind: string; metadata: { name: string }; spec: Record<string, unknown> };

async function docs(file: string): Promise<Obj[]> {
  const text = await readFile(path.join(REPO_ROOT, 'manifests', file), 'utf8');
  return parseAllDocuments(text).map((d) => {
    expect(d.errors, file).toEqual([]);
    return d.toJS() as Obj;
  });
}

function only<T>(list: T[], what: string): T {
  expect(list, what).toHaveLength(1);
  return list[0] as T;
}

/**
 * The policy's CEL apply configuration as JSON: drop the type names before `{` and quote the
 * bare field names. Enough for the literal we write (no CEL operators in it).
 */
function celObjectToJson(expr: string): unknown {
  return JSON.parse(expr.replace(/Object(?:\.\w+)*\s*\{/g, '{').replace(/([{,]\s*)([A-Za-z_]\w*)\s*:/g, '$1"$2":'));
}

// Fields of KubeVirt's plugin.kubevirt.io/v1alpha1 Plugin (staging/src/kubevirt.io/api/plugin/v1alpha1/types.go).
const PLUGIN_SPEC_FIELDS = ['condition', 'failureStrategy', 'domainHooks', 'nodeHooks', 'mutatingAdmissionPolicies', 'validatingAdmissionPolicies', 'mutatingAdmissionWebhooks', 'validatingAdmissionWebhooks'];
const DOMAIN_HOOK_FIELDS = ['cel', 'sidecar', 'condition', 'failureStrategy', 'timeout'];

describe('manifests/kubevirt/plugin.yaml', () => {
  it('the Plugin CR has only upstream fields and a socket path KubeVirt admits, the one the CLI listens on by default', async () => {
    const all = await docs('kubevirt/plugin.yaml');
    const plugin = only(all.filter((o) => o.kind === 'Plugin'), 'Plugin');
    expect(plugin.apiVersion).toBe('plugin.kubevirt.io/v1alpha1');
    expect(plugin.metadata.name).toBe(PLUGIN_NAME);
    expect(Object.keys(plugin.spec).filter((k) => !PLUGIN_SPEC_FIELDS.includes(k))).toEqual([]);
    const hooks = plugin.spec.domainHooks as Array<Record<string, unknown>>;
    const hook = only(hooks, 'domainHooks');
    expect(Object.keys(hook).filter((k) => !DOMAIN_HOOK_FIELDS.includes(k))).toEqual([]);
    const socketPath = (hook.sidecar as { socketPath: string }).socketPath;
    expect(checkPluginSocketPath(socketPath, plugin.metadata.name)).toEqual([]);
    expect(socketPath).toBe(DEFAULT_PLUGIN_SOCKET);
    expect(['Fail', 'Ignore']).toContain(plugin.spec.failureStrategy);
    // Without a condition every VMI's launcher would wait for a socket only SPDK VMIs have.
    expect(plugin.spec.condition).toBe(`"${SPDK_DISKS_LABEL}" in vmi.Labels && vmi.Labels["${SPDK_DISKS_LABEL}"] == "true"`);
    const referenced = (plugin.spec.mutatingAdmissionPolicies as Array<{ name: string }>).map((r) => r.name);
    const policy = only(all.filter((o) => o.kind === 'MutatingAdmissionPolicy'), 'MutatingAdmissionPolicy');
    expect(referenced).toEqual([policy.metadata.name]);
  });

  it('the policy injects a valid native sidecar into SPDK launcher pods only, mounting its own socket directory', async () => {
    const all = await docs('kubevirt/plugin.yaml');
    const policy = only(all.filter((o) => o.kind === 'MutatingAdmissionPolicy'), 'MutatingAdmissionPolicy');
    const binding = only(all.filter((o) => o.kind === 'MutatingAdmissionPolicyBinding'), 'MutatingAdmissionPolicyBinding');
    expect(binding.spec.policyName).toBe(policy.metadata.name);
    const mc = policy.spec.matchConstraints as { objectSelector: { matchLabels: Record<string, string> }; resourceRules: Array<{ resources: string[]; operations: string[] }> };
    expect(mc.objectSelector.matchLabels).toEqual({ 'kubevirt.io': 'virt-launcher', [SPDK_DISKS_LABEL]: 'true' });
    expect(mc.resourceRules).toMatchObject([{ resources: ['pods'], operations: ['CREATE'] }]);

    const mutation = only(policy.spec.mutations as Array<{ patchType: string; applyConfiguration: { expression: string } }>, 'mutations');
    expect(mutation.patchType).toBe('ApplyConfiguration');
    const applied = celObjectToJson(mutation.applyConfiguration.expression) as { spec: { initContainers: Array<Record<string, unknown>> } };
    const sidecar = only(applied.spec.initContainers, 'initContainers');
    // A launcher pod as virt-controller renders it with the Plugins gate: the socket volume exists.
    const pod = new Pod({
      metadata: { name: 'virt-launcher-x' },
      spec: {
        containers: [{ name: 'compute', image: 'virt-launcher', volumeMounts: [{ name: 'kubevirt-plugin-sockets', mountPath: '/var/run/kubevirt-plugin' }] }],
        // The schema check below is what makes this a Container.
        initContainers: [sidecar as unknown as IContainer],
        volumes: [{ name: 'kubevirt-plugin-sockets', emptyDir: {} }],
      },
    });
    expect(() => pod.validate()).not.toThrow();

    expect(sidecar.restartPolicy).toBe('Always');
    expect(sidecar.args).toEqual(['plugin', '--socket', DEFAULT_PLUGIN_SOCKET]);
    const mounts = sidecar.volumeMounts as Array<{ name: string; mountPath: string; subPath?: string }>;
    // KubeVirt's policy: a sidecar mounting the plugin socket volume must use a subPath.
    expect(mounts).toEqual([{ name: 'kubevirt-plugin-sockets', mountPath: path.posix.dirname(DEFAULT_PLUGIN_SOCKET), subPath: PLUGIN_NAME }]);
    const res = sidecar.resources as { requests: Record<string, string>; limits: Record<string, string> };
    // Equal requests and limits keep launcher pods of dedicated-CPU VMs in the Guaranteed QoS class.
    expect(res.requests).toEqual(res.limits);

    // The image is written in CEL, out of kustomize's reach: it must match the kustomization's.
    const k = parse(await readFile(path.join(REPO_ROOT, 'manifests/kustomization.yaml'), 'utf8')) as { images?: Array<{ name: string; newName?: string; newTag?: string }> };
    const ours = k.images?.find((i) => i.name === 'kubevirt-spdk');
    if (ours?.newName !== undefined) expect(sidecar.image).toBe(`${ours.newName}${ours.newTag ? `:${ours.newTag}` : ''}`);
  });
});
