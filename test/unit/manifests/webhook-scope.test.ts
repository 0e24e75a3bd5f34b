/**
 * Which admission requests the API server sends to our webhooks: the rules and the CEL
 * matchConditions of manifests/webhook/mutatingwebhook.yaml, evaluated with a CEL
 * implementation on requests shaped like KubeVirt's own writes and like a user's. The API
 * server's semantics (admissionregistration.k8s.io/v1): a webhook is called when one rule
 * matches (operation, resource) and every matchCondition is true; a condition that is false
 * skips it even if another errs; an error with none false falls to failurePolicy.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { evaluate } from '@marcbachmann/cel-js';
import { parse } from 'yaml';
import { REPO_ROOT } from '../../helpers/cli.js';
import { mutate } from '../../../webhooks/mutate.js';
import type { AdmissionRequest } from '../../../webhooks/admission-review.js';
import { VOLUMES_ANNOTATION } from '../../../src/api/volumes.js';
import { testCatalog } from '../../helpers/webhook.js';

interface Webhook {
  name: string;
  failurePolicy: string;
  rules: Array<{ apiGroups: string[]; apiVersions: string[]; operations: string[]; resources: string[] }>;
  matchConditions?: Array<{ name: string; expression: string }>;
}

const config = parse(await readFile(path.join(REPO_ROOT, 'manifests/webhook/mutatingwebhook.yaml'), 'utf8')) as { webhooks: Webhook[] };

type Operation = 'CREATE' | 'UPDATE' | 'DELETE';
interface Req {
  operation: Operation;
  resource: 'virtualmachineinstances' | 'virtualmachines';
  object: Record<string, unknown> | null;
  oldObject: Record<string, unknown> | null;
}

/** 'called' | 'skipped' | 'error' (then failurePolicy decides) for one webhook. */
function decide(w: Webhook, r: Req): 'called' | 'skipped' | 'error' {
  const ruleMatches = w.rules.some((rule) => rule.apiGroups.includes('kubevirt.io') && rule.operations.includes(r.operation) && rule.resources.includes(r.resource));
  if (!ruleMatches) return 'skipped';
  const vars = {
    object: r.object,
    oldObject: r.oldObject,
    request: { operation: r.operation, resource: { group: 'kubevirt.io', version: 'v1', resource: r.resource } },
  };
  let errored = false;
  for (const c of w.matchConditions ?? []) {
    let v: unknown;
    try {
      v = evaluate(c.expression, vars);
    } catch {
      errored = true;
      continue;
    }
    if (typeof v !== 'boolean') throw new Error(`${w.name}/${c.name}: evaluated to ${String(v)}, not a bool`);
    if (!v) return 'skipped';
  }
  return errored ? 'error' : 'called';
}

/** The webhooks that would hold the request if our server were down (called or erroring with Fail). */
function blockedBy(r: Req): string[] {
  return config.webhooks.filter((w) => {
    const d = decide(w, r);
    return d === 'called' ? w.failurePolicy === 'Fail' : d === 'error' && w.failurePolicy === 'Fail';
  }).map((w) => w.name);
}

const VOLS = '- name: rootdisk\n  spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}\n';

function spdkVmi(extra: Record<string, unknown> = {}, annotations: Record<string, string> = { [VOLUMES_ANNOTATION]: VOLS }): Record<string, unknown> {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { name: 'v', namespace: 'default', uid: 'u1', annotations: { 'hooks.kubevirt.io/hookSidecars': '[]', ...annotations }, finalizers: ['kubevirt.io/virtualMachineControllerFinalize', 'foregroundDeleteVirtualMachine'] },
    spec: { domain: { devices: {} } },
    ...extra,
  };
}

function spdkVm(templateAnnotations: Record<string, string> | null = { [VOLUMES_ANNOTATION]: VOLS }, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name: 'vm', namespace: 'default', finalizers: ['kubevirt.io/virtualMachineControllerFinalize'] },
    spec: { runStrategy: 'Always', template: { metadata: templateAnnotations ? { annotations: templateAnnotations } : {}, spec: { domain: { devices: {} } } } },
    ...extra,
  };
}

const vmi = (operation: Operation, object: Record<string, unknown> | null, oldObject: Record<string, unknown> | null = null): Req => ({ operation, resource: 'virtualmachineinstances', object, oldObject });
const vm = (operation: Operation, object: Record<string, unknown> | null, oldObject: Record<string, unknown> | null = null): Req => ({ operation, resource: 'virtualmachines', object, oldObject });

describe("KubeVirt's own writes never reach a fail-closed webhook", () => {
  const running = spdkVmi({ status: { phase: 'Scheduled' } });
  const cases: Array<[string, Req]> = [
    ['virt-handler writes the VMI status (no status subresource: an UPDATE)', vmi('UPDATE', spdkVmi({ status: { phase: 'Running', interfaces: [] } }), running)],
    ['virt-controller removes its finalizer', vmi('UPDATE', { ...running, metadata: { ...(running.metadata as object), finalizers: [] } }, running)],
    ['virt-controller adds labels and annotations of its own', vmi('UPDATE', spdkVmi({}, { [VOLUMES_ANNOTATION]: VOLS, 'kubevirt.io/latest-observed-api-version': 'v1' }), running)],
    ['our agent writes its status annotation', vmi('UPDATE', spdkVmi({}, { [VOLUMES_ANNOTATION]: VOLS, 'kubevirt-spdk.io/status': '{}' }), running)],
    ['the VMI is deleted', vmi('DELETE', null, running)],
    ['virt-controller updates a VM (finalizer, annotations)', vm('UPDATE', spdkVm(null, { metadata: { name: 'vm', annotations: { 'kubevirt.io/latest-observed-api-version': 'v1' } } }), spdkVm())],
    ['virt-controller updates a VM whose template has our volumes', vm('UPDATE', { ...spdkVm(), metadata: { name: 'vm', finalizers: [] } }, spdkVm())],
    ['a VMI without SPDK volumes is created', vmi('CREATE', spdkVmi({}, {}))],
    ['a VM without SPDK volumes is updated', vm('UPDATE', spdkVm(null), spdkVm(null))],
  ];
  for (const [what, req] of cases) {
    it(what, () => expect(blockedBy(req)).toEqual([]));
  }
});

describe('what a user does reaches the right webhook, and the server decides it', () => {
  const catalog = testCatalog();
  const answer = (r: Req) => {
    const request: AdmissionRequest = {
      uid: 'u',
      kind: { group: 'kubevirt.io', version: 'v1', kind: r.resource === 'virtualmachines' ? 'VirtualMachine' : 'VirtualMachineInstance' },
      operation: r.operation,
      object: r.object,
      oldObject: r.oldObject,
    };
    return mutate(request, catalog, { sidecarImage: 'example.org/kubevirt-spdk:t' });
  };

  it('a VMI with SPDK volumes is created: admitted and mutated (fail closed)', () => {
    const r = vmi('CREATE', spdkVmi());
    expect(blockedBy(r)).toEqual(['volumes.kubevirt-spdk.io']);
    expect(answer(r).patch).toBeDefined();
  });

  it('a VM with SPDK volumes is created, or its template list changes: validated', () => {
    expect(blockedBy(vm('CREATE', spdkVm()))).toEqual(['volumes.kubevirt-spdk.io']);
    const changed = vm('UPDATE', spdkVm({ [VOLUMES_ANNOTATION]: '- {name: ../../etc, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}}' }), spdkVm());
    expect(blockedBy(changed)).toEqual(['volumes.kubevirt-spdk.io']);
    expect(answer(changed).allowed).toBe(false);
    expect(blockedBy(vm('UPDATE', spdkVm(), spdkVm(null)))).toEqual(['volumes.kubevirt-spdk.io']);
  });

  it("a change of a VMI's volume list (F9: ../../etc, /etc/shadow), its addition or its removal: sent and refused", () => {
    const before = spdkVmi();
    for (const after of [
      spdkVmi({}, { [VOLUMES_ANNOTATION]: '- {name: ../../etc, spdkVhostBlkDisk: {blank: {}, capacity: 1Gi}}' }),
      spdkVmi({}, { [VOLUMES_ANNOTATION]: '- {name: x, spdkVhostBlkDisk: {bdev: /etc/shadow}}' }),
      spdkVmi({}, {}),
    ]) {
      const r = vmi('UPDATE', after, before);
      expect(blockedBy(r)).toEqual(['immutable-volumes.kubevirt-spdk.io']);
      expect(answer(r).allowed).toBe(false);
    }
    const added = vmi('UPDATE', spdkVmi(), spdkVmi({}, {}));
    expect(blockedBy(added)).toEqual(['immutable-volumes.kubevirt-spdk.io']);
    expect(answer(added).allowed).toBe(false);
  });

  it('no condition errs on any request above (an error would fall to failurePolicy)', () => {
    const reqs = [vmi('CREATE', spdkVmi()), vmi('UPDATE', spdkVmi(), spdkVmi({}, {})), vm('UPDATE', spdkVm(), spdkVm(null)), vm('UPDATE', spdkVm(null), spdkVm()), vm('CREATE', spdkVm(null))];
    for (const r of reqs) for (const w of config.webhooks) expect(decide(w, r)).not.toBe('error');
  });
});
