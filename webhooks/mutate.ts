/**
 * The admission decision, as a pure function: (AdmissionRequest, catalog, config) ->
 * AdmissionResponse. No I/O, so it is tested densely and benchmarked without a server.
 */
import jsonpatch, { type Operation } from 'fast-json-patch';
import { ValidationError } from '../src/api/errors.js';
import { capacityProblem } from '../src/contract/index.js';
import { VHOST_SLOT_RESOURCE, VOLUMES_ANNOTATION, type SpdkVolume } from '../src/api/volumes.js';
import { ANNOTATION_YAML_LIMITS } from '../src/api/yaml.js';
import { parseVmi, spdkVolumesOf } from '../src/api/vmi.js';
import { CALLBACK_VERSIONS } from '../src/sidecar/versions.js';
import type { AdmissionRequest, AdmissionResponse } from './admission-review.js';
import type { ImageCatalog } from './catalog.js';
import { PatchPathError, getAt, pointer, setAt } from './jsonpatch.js';
import { CACHE_AFFINITY_ANNOTATION, DEFAULT_CACHE_AFFINITY_WEIGHT, PREFERRED_PATH, cacheAffinityTerms, mergeCacheAffinity } from './affinity.js';

/** KubeVirt's list of hook sidecars for a VMI (JSON list of {image, args, ...}). */
export const HOOK_SIDECARS_ANNOTATION = 'hooks.kubevirt.io/hookSidecars';
/** Label on every VMI with SPDK disks: KubeVirt MigrationPolicies select VMIs by label. */
export const SPDK_DISKS_LABEL = 'kubevirt-spdk.io/disks';
/**
 * How the webhook wires our domain rewrite into virt-launcher:
 * - `all` (default): add the hook sidecar, listing Callbacks v1alpha1..v1alpha3; virt-launcher
 *   picks the newest it speaks: v1alpha3 with Shutdown on KubeVirt >= v1.2.0 (so the launcher
 *   pod terminates after the VM), v1alpha2 on older releases;
 * - a version: add the hook sidecar pinned to it (v1alpha3 fails on KubeVirt < v1.2.0);
 * - `none`: no hook sidecar, for KubeVirt >= v1.9 with the Plugin CR (VEP 190), whose sidecar
 *   is added to the launcher pod by manifests/kubevirt/plugin.yaml.
 */
export const HOOK_SIDECAR_MODES = ['all', ...CALLBACK_VERSIONS, 'none'] as const;
export type HookSidecarMode = (typeof HOOK_SIDECAR_MODES)[number];

/** The injected container's args (the image's entry point is the kubevirt-spdk CLI). */
export function sidecarArgs(mode: Exclude<HookSidecarMode, 'none'>): string[] {
  return mode === 'all' ? ['sidecar'] : ['sidecar', '--version', mode];
}

export const MAX_VOLUMES_ANNOTATION_BYTES = ANNOTATION_YAML_LIMITS.maxBytes;

export interface MutationConfig {
  /** Image of the kubevirt-spdk hook sidecar, e.g. registry/kubevirt-spdk:v0.1.0. */
  sidecarImage: string;
  /** See HOOK_SIDECAR_MODES; default `all`. */
  hookSidecar?: HookSidecarMode;
  /**
   * Total weight (0..100) of the preferred node affinity toward nodes that hold the VMI's
   * images; 0 adds none. Default DEFAULT_CACHE_AFFINITY_WEIGHT.
   */
  cacheAffinityWeight?: number;
}

/**
 * Where the VMI-shaped part of an object lives: a VMI is itself; a VirtualMachine carries
 * one in `spec.template` (its VMIs are admitted again when they are created).
 */
interface Target {
  path: readonly string[];
  /** Prefix of field names in messages. */
  where: string;
}

const TARGETS: Record<string, Target> = {
  VirtualMachineInstance: { path: [], where: '' },
  VirtualMachine: { path: ['spec', 'template'], where: 'spec.template.' },
};

function allow(uid: string, patch: Operation[] = [], warnings: string[] = []): AdmissionResponse {
  const res: AdmissionResponse = { uid, allowed: true };
  if (patch.length) {
    res.patchType = 'JSONPatch';
    res.patch = Buffer.from(JSON.stringify(patch)).toString('base64');
  }
  if (warnings.length) res.warnings = warnings;
  return res;
}

function deny(uid: string, problems: string[], code = 422): AdmissionResponse {
  return { uid, allowed: false, status: { code, reason: code === 422 ? 'Invalid' : 'BadRequest', message: problems.join('; ') } };
}

/** `registry:5000/org/img:tag@sha256:..` -> `registry:5000/org/img`. */
export function imageRepository(image: string): string {
  const noDigest = image.split('@')[0] ?? image;
  const colon = noDigest.lastIndexOf(':');
  return colon > noDigest.lastIndexOf('/') ? noDigest.slice(0, colon) : noDigest;
}

/** The bootOrder values already taken by the VMI's own disks and interfaces. */
function ownBootOrders(spec: unknown, where: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const kind of ['disks', 'interfaces'] as const) {
    const list = getAt(spec, ['domain', 'devices', kind]);
    if (!Array.isArray(list)) continue;
    list.forEach((d: unknown, i) => {
      const b = (d as { bootOrder?: unknown } | null)?.bootOrder;
      const name = (d as { name?: unknown } | null)?.name;
      if (typeof b === 'number') out.set(b, `${where}spec.domain.devices.${kind}[${i}]${typeof name === 'string' ? ` (${name})` : ''}`);
    });
  }
  return out;
}

/** Rules that need the catalog or the rest of the VMI, beyond the annotation's schema. */
function checkVolumes(vols: SpdkVolume[], spec: unknown, where: string, catalog: ImageCatalog): string[] {
  const problems: string[] = [];
  const boots = ownBootOrders(spec, where);
  vols.forEach((v, i) => {
    const field = `volumes[${i}].spdkVhostBlkDisk`;
    const d = v.spdkVhostBlkDisk;
    if (d.image !== undefined) {
      const img = catalog.get(d.image);
      if (img === undefined) problems.push(`${field}.image: CachedImage "${d.image}" does not exist`);
      else {
        const tooSmall = capacityProblem(d.capacity?.bytes, d.image, img.sizeBytes, d.capacity?.text);
        if (tooSmall) problems.push(`${field}.capacity: ${tooSmall}`);
      }
    }
    const taken = d.bootOrder === undefined ? undefined : boots.get(d.bootOrder);
    if (taken !== undefined) problems.push(`${field}.bootOrder: ${d.bootOrder} is already used by ${taken}`);
  });
  return problems;
}

/**
 * Things the VMI asks for that cannot work with vhost-user disks, refused here rather than
 * failing on the node:
 * - launchSecurity (SEV): guest memory is encrypted, the vhost-user back end cannot read it;
 * - a vhost-slot request other than 1: each VMI holds exactly one slot (Allocate enforces it).
 * Hugepages are fine: the converter's shared memfd backing works with them.
 */
function checkDomain(spec: unknown, where: string): string[] {
  const problems: string[] = [];
  if (getAt(spec, ['domain', 'launchSecurity']) !== undefined) {
    problems.push(
      `${where}spec.domain.launchSecurity: is not supported with kubevirt-spdk volumes (encrypted guest memory cannot be shared with the vhost-user back end)`,
    );
  }
  for (const kind of ['requests', 'limits'] as const) {
    const v = getAt(spec, ['domain', 'resources', kind, VHOST_SLOT_RESOURCE]);
    if (v !== undefined && String(v) !== '1') {
      problems.push(`${where}spec.domain.resources.${kind}["${VHOST_SLOT_RESOURCE}"]: must be "1" (one vhost slot per VMI), found ${JSON.stringify(v)}`);
    }
  }
  return problems;
}

type SidecarList = Array<Record<string, unknown>>;

function parseSidecars(text: string | undefined, field: string): SidecarList {
  if (text === undefined || text.trim() === '') return [];
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new ValidationError([`${field}: must be a JSON list of hook sidecars`]);
  }
  if (!Array.isArray(doc) || !doc.every((e) => typeof e === 'object' && e !== null && !Array.isArray(e))) {
    throw new ValidationError([`${field}: must be a JSON list of hook sidecars (objects with "image")`]);
  }
  return doc as SidecarList;
}

/** The hookSidecars list with our entry in it (the user's entries kept), or undefined if already so. */
function withOurSidecar(list: SidecarList, cfg: MutationConfig): SidecarList | undefined {
  const mode = cfg.hookSidecar ?? 'all';
  if (mode === 'none') return undefined;
  const repo = imageRepository(cfg.sidecarImage);
  const idx = list.findIndex((e) => typeof e.image === 'string' && imageRepository(e.image) === repo);
  const ours = { ...(idx >= 0 ? list[idx] : {}), args: sidecarArgs(mode), image: cfg.sidecarImage };
  if (idx >= 0) {
    if (JSON.stringify(ours) === JSON.stringify(list[idx])) return undefined;
    return list.map((e, i) => (i === idx ? ours : e));
  }
  return [...list, ours];
}

function objectAt(root: unknown, path: readonly string[]): unknown {
  return path.length ? getAt(root, path) : root;
}

export function mutate(req: AdmissionRequest, catalog: ImageCatalog, cfg: MutationConfig): AdmissionResponse {
  const { uid } = req;
  const target = TARGETS[req.kind.kind];
  // The webhook configuration scopes us to VMIs and VMs; anything else passes untouched.
  if (target === undefined || req.object == null || (req.operation !== 'CREATE' && req.operation !== 'UPDATE')) return allow(uid);

  const vmiLike = objectAt(req.object, target.path);
  const metaPath = [...target.path, 'metadata'];
  const annotations = getAt(req.object, [...metaPath, 'annotations']);
  const volumesText = (annotations as Record<string, unknown> | undefined)?.[VOLUMES_ANNOTATION];
  const field = `${target.where}metadata.annotations["${VOLUMES_ANNOTATION}"]`;

  if (req.operation === 'UPDATE') {
    // VMIs have no status subresource: every status write and finalizer change of KubeVirt is
    // an UPDATE. Those leave our annotation as it was and pass without any work (the webhook
    // configuration does not even send them where the API server evaluates matchConditions).
    const before = getAt(req.oldObject, [...metaPath, 'annotations', VOLUMES_ANNOTATION]);
    if (before === volumesText) return allow(uid);
    if (req.kind.kind === 'VirtualMachineInstance') {
      // A running VMI's disks are provisioned, attached to QEMU and named in its domain: a new
      // list cannot take effect, and the agent must never act on one that was not admitted.
      return deny(uid, [`${field}: cannot be changed on an existing VMI (its disks are already provisioned); create a new VMI, or change the VirtualMachine's template and restart it`]);
    }
    // A VirtualMachine's template: the new list is validated as on CREATE (below).
  }
  if (volumesText === undefined) return allow(uid);
  if (typeof volumesText !== 'string') return deny(uid, [`${field}: must be a string`]);

  if (volumesText.length > MAX_VOLUMES_ANNOTATION_BYTES) {
    // 26 volumes fit in a few KiB; refusing early keeps a huge YAML off the event loop.
    return deny(uid, [`${field}: must be at most ${MAX_VOLUMES_ANNOTATION_BYTES} characters, found ${volumesText.length}`]);
  }
  if (!catalog.synced()) return deny(uid, ['the CachedImage catalog is not loaded yet; retry'], 503);

  const spec = getAt(vmiLike, ['spec']);
  let vols: SpdkVolume[];
  try {
    // The VMI's name may still be empty (generateName): it plays no part in validation.
    const meta = (getAt(vmiLike, ['metadata']) ?? {}) as Record<string, unknown>;
    const vmi = parseVmi({ metadata: { ...meta, name: typeof meta.name === 'string' && meta.name ? meta.name : 'unnamed' }, spec: spec ?? {} }, target.where.replace(/\.$/, ''));
    // parseVolumesAnnotation caches by text: VMs of one template parse once.
    vols = spdkVolumesOf(vmi);
  } catch (e) {
    if (!(e instanceof ValidationError)) throw e;
    const long = `metadata.annotations["${VOLUMES_ANNOTATION}"]`;
    return deny(uid, e.problems.map((p) => (p.startsWith(long) ? `volumes${p.slice(long.length)}` : p)));
  }

  const problems = [...checkVolumes(vols, spec, target.where, catalog), ...checkDomain(spec, target.where)];
  const warnings = vols.flatMap((v, i) =>
    v.spdkVhostBlkDisk.reconnectTimeout === undefined
      ? []
      : [`${target.where}volumes[${i}].spdkVhostBlkDisk.reconnectTimeout: deprecated, use reconnectInterval: it is the interval between QEMU's reconnect attempts (libvirt <reconnect timeout>), not a deadline; QEMU retries forever and the guest may wait up to this long after the backend is back (recommended: 1s)`],
  );
  const sidecarField = `${target.where}metadata.annotations["${HOOK_SIDECARS_ANNOTATION}"]`;
  const existing = (annotations as Record<string, unknown>)[HOOK_SIDECARS_ANNOTATION];
  let sidecars: SidecarList = [];
  if (existing !== undefined && typeof existing !== 'string') problems.push(`${sidecarField}: must be a string`);
  else {
    try {
      sidecars = parseSidecars(existing, sidecarField);
    } catch (e) {
      if (!(e instanceof ValidationError)) throw e;
      problems.push(...e.problems);
    }
  }
  if (problems.length) return deny(uid, problems);

  // Each op is computed on the document as the previous ops left it (requests and limits may
  // share a missing parent); the copy is made only once something changes.
  const ops: Operation[] = [];
  let doc: unknown = req.object;
  const push = (op: Operation | undefined): void => {
    if (!op) return;
    if (doc === req.object) doc = structuredClone(req.object);
    jsonpatch.applyOperation(doc, op, false, true);
    ops.push(op);
  };
  const next = withOurSidecar(sidecars, cfg);
  try {
    if (next !== undefined) push(setAt(doc, [...metaPath, 'annotations', HOOK_SIDECARS_ANNOTATION], JSON.stringify(next)));
    // Selects the VMI for the pre-copy-only MigrationPolicy shipped in manifests/kubevirt/.
    push(setAt(doc, [...metaPath, 'labels', SPDK_DISKS_LABEL], 'true'));
    for (const kind of ['requests', 'limits']) {
      push(setAt(doc, [...target.path, 'spec', 'domain', 'resources', kind, VHOST_SLOT_RESOURCE], '1'));
    }
  } catch (e) {
    if (!(e instanceof PatchPathError)) throw e;
    return deny(uid, [`${e.message} (cannot add the vhost slot)`]);
  }
  // Placement is decided per VMI, when it is created: a VM's template would carry node names
  // that are stale by the time it starts, and rewriting it on every VM update would churn the
  // template of running VMs. The VMI a VM starts is admitted here on its own.
  if (req.kind.kind === 'VirtualMachineInstance' && req.operation === 'CREATE') {
    const images = vols.flatMap((v) => (v.spdkVhostBlkDisk.image === undefined ? [] : [{ image: v.spdkVhostBlkDisk.image, nodes: catalog.get(v.spdkVhostBlkDisk.image)?.readyNodeNames ?? [] }]));
    const terms = cacheAffinityTerms(images, cfg.cacheAffinityWeight ?? DEFAULT_CACHE_AFFINITY_WEIGHT);
    const annotationPath = [...metaPath, 'annotations', CACHE_AFFINITY_ANNOTATION];
    const prefPath = ['spec', ...PREFERRED_PATH];
    const change = mergeCacheAffinity(getAt(doc, prefPath), getAt(doc, annotationPath), terms, prefPath.join('.'));
    try {
      if (change.preferred !== undefined) push(setAt(doc, prefPath, change.preferred));
      if (change.annotation === null) push({ op: 'remove', path: pointer(annotationPath) });
      else if (change.annotation !== undefined) push(setAt(doc, annotationPath, change.annotation));
    } catch (e) {
      if (!(e instanceof PatchPathError)) throw e;
      // The user's affinity is malformed: the API server refuses it anyway; ours is optional.
      warnings.push(`${e.message}; cache-aware placement skipped`);
    }
    if (change.warning) warnings.push(change.warning);
  }
  return allow(uid, ops, warnings);
}
