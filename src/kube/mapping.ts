import { z } from 'zod';
import { CachedImageSchema } from '../api/cachedimage.js';
import { ValidationError, formatZodError } from '../api/errors.js';
import type { VmiRef, VmiStatus } from '../api/status.js';
import { hasSpdkVolumes, parseVmi, vmiUid } from '../api/vmi.js';
import { STATUS_ANNOTATION } from '../api/volumes.js';
import { NO_SLOT_PROBLEM, buildDesired, imageSpecOf, type DesiredState, type ViewVmi } from '../agent/desired.js';
import type { NodeMigrationIntent } from '../migration/coordinator.js';
import type { NodeStatus } from '../agent/node-status.js';
import type { ImageSpec } from '../backend/types.js';
import { RemoteDiskRefSchema } from '../backend/remote.js';
import type { GoldenInfo } from '../agent/image-peers.js';
import type { PeerGolden } from '../agent/image-sources.js';
import type { PodSlot } from './podresources.js';
import { MigrationExportsSchema, MigrationHydratedSchema } from './migration-view.js';

/**
 * The pure half of cluster mode: informer caches + PodResources slots + catalog -> the node's
 * DesiredState, and the agent's reports -> VMI status patches, Events and the NodeImageCache
 * status. No I/O here; cluster.ts feeds it and writes what it returns.
 */

export const LAUNCHER_LABEL = 'kubevirt.io';
export const LAUNCHER_LABEL_VALUE = 'virt-launcher';
/** On a launcher pod: the uid of the VMI it runs. */
export const CREATED_BY_LABEL = 'kubevirt.io/created-by';
export const VMI_NODE_LABEL = 'kubevirt.io/nodeName';
export const VMI_MIGRATION_TARGET_LABEL = 'kubevirt.io/migrationTargetNodeName';

/** The fields of a launcher pod that the mapping reads. */
export const LauncherPodSchema = z
  .object({
    metadata: z
      .object({ name: z.string(), namespace: z.string().default('default'), labels: z.record(z.string()).nullish() })
      .passthrough(),
    spec: z.object({ nodeName: z.string().nullish() }).passthrough().nullish(),
    status: z.object({ phase: z.string().nullish() }).passthrough().nullish(),
  })
  .passthrough();
export type LauncherPod = z.output<typeof LauncherPodSchema>;

const TERMINAL_POD_PHASES = new Set(['Succeeded', 'Failed']);

export { NO_SLOT_PROBLEM };

/**
 * VMI uid -> slot: the slot that PodResources lists for a live launcher pod of the VMI on this
 * node. Pods that finished are ignored (a restarted VMI's old pod). When two live pods of one
 * VMI hold slots, the slot the VMI had before wins, so a running VM never changes slot.
 */
export function slotsByVmi(pods: readonly unknown[], podSlots: readonly PodSlot[], lastSlots: ReadonlyMap<string, string> = new Map()): Map<string, string> {
  const slotOfPod = new Map<string, string>();
  for (const s of podSlots) slotOfPod.set(`${s.namespace}/${s.pod}`, s.slot);
  const candidates = new Map<string, string[]>();
  for (const raw of pods) {
    const res = LauncherPodSchema.safeParse(raw);
    if (!res.success) continue;
    const pod = res.data;
    const uid = pod.metadata.labels?.[CREATED_BY_LABEL];
    if (!uid || TERMINAL_POD_PHASES.has(pod.status?.phase ?? '')) continue;
    const slot = slotOfPod.get(`${pod.metadata.namespace}/${pod.metadata.name}`);
    if (slot) candidates.set(uid, [...(candidates.get(uid) ?? []), slot]);
  }
  const out = new Map<string, string>();
  for (const [uid, slots] of candidates) {
    const last = lastSlots.get(uid);
    out.set(uid, last !== undefined && slots.includes(last) ? last : ([...slots].sort()[0] as string));
  }
  return out;
}

/** A VMI from the API: parsed, or (when it does not parse) its identity with the problems. */
export function vmiInputOf(raw: unknown): ViewVmi | undefined {
  const m = (raw as { metadata?: { name?: unknown; namespace?: unknown; uid?: unknown } } | null)?.metadata;
  if (!m || typeof m.name !== 'string') return undefined;
  const origin = `${typeof m.namespace === 'string' ? m.namespace : 'default'}/${m.name}`;
  try {
    return { origin, vmi: parseVmi(raw, origin) };
  } catch (e) {
    const problems = e instanceof ValidationError ? e.problems : [`${origin}: ${String(e)}`];
    const vmi = parseVmi({ metadata: { name: m.name, ...(typeof m.namespace === 'string' ? { namespace: m.namespace } : {}), ...(typeof m.uid === 'string' ? { uid: m.uid } : {}) } });
    return { origin, vmi, problems };
  }
}

/** The catalog from the CachedImage informer; an invalid object is left out and reported. */
export function catalogOf(rawImages: readonly unknown[]): { images: ImageSpec[]; problems: string[] } {
  const images: ImageSpec[] = [];
  const problems: string[] = [];
  for (const raw of rawImages) {
    const name = (raw as { metadata?: { name?: unknown } } | null)?.metadata?.name;
    const res = CachedImageSchema.safeParse(raw);
    if (res.success) images.push(imageSpecOf(res.data));
    else problems.push(...formatZodError(`cachedimage ${typeof name === 'string' ? name : '?'}`, res.error));
  }
  return { images: images.sort((a, b) => a.name.localeCompare(b.name)), problems };
}

export interface ClusterView {
  /** VMIs labelled with this node (`kubevirt.io/nodeName`). */
  vmis: readonly unknown[];
  /** Launcher pods on this node. */
  pods: readonly unknown[];
  podSlots: readonly PodSlot[];
  cachedImages: readonly unknown[];
  /** Slots chosen before, by VMI uid (keeps a VM's slot stable). */
  lastSlots?: ReadonlyMap<string, string>;
  slotHolder?: (slot: string) => string | undefined;
  /** VMIs migrating to this node (`kubevirt.io/migrationTargetNodeName`). */
  migrationTargets?: readonly unknown[];
  /** The node's migration intent (kube/migration.ts): VMIs served from another node, handed over, exports. */
  migration?: NodeMigrationIntent;
}

export interface ClusterDesired {
  desired: DesiredState;
  /** VMI uid -> slot, for the VMIs that have one now. */
  slots: Map<string, string>;
}

/**
 * The node view, resolved into the desired state. Only VMIs with our volumes annotation take
 * part. The slot comes from PodResources alone (a slot annotation written by a user is
 * ignored: the device plugin's allocation is the truth). A VMI without a slot yet stays in the
 * desired state with a problem, so that nothing it already has is deleted while its pod
 * (re)starts. Migration: a VMI handed over to another node leaves (its controllers go; its
 * disks stay while exported); a VMI served here from another node's exports joins with those
 * disks attached; the node's exports are desired state too.
 */
export function clusterDesired(view: ClusterView): ClusterDesired {
  const slots = slotsByVmi(view.pods, view.podSlots, view.lastSlots);
  const catalog = catalogOf(view.cachedImages);
  const m = view.migration;
  const inputs: ViewVmi[] = [];
  const seen = new Set<string>();
  const onNode = new Set(view.vmis);
  for (const raw of [...view.vmis, ...(view.migrationTargets ?? [])]) {
    const input = vmiInputOf(raw);
    if (!input) continue;
    const uid = vmiUid(input.vmi);
    if (seen.has(uid)) continue;
    seen.add(uid);
    const serve = m?.serve.get(uid);
    if (onNode.has(raw) ? m?.handedOver.has(uid) : !serve) continue;
    if (!input.problems && !hasSpdkVolumes(input.vmi)) continue;
    const slot = slots.get(uid);
    inputs.push({ ...input, ...(slot !== undefined ? { slot } : {}), ...(serve ? { attached: serve.attached } : {}) });
  }
  const desired = buildDesired({ vmis: inputs, images: catalog.images, exports: m?.exports ?? [], problems: catalog.problems }, view.slotHolder ? { slotHolder: view.slotHolder } : {});
  return { desired, slots };
}

// ---- agent report -> VMI status annotation ------------------------------------------------------

/** The status without its timestamp: what decides whether a patch is needed. */
function statusContent(s: unknown): string | undefined {
  if (!s || typeof s !== 'object') return undefined;
  const { updatedAt: _ignored, ...rest } = s as Record<string, unknown>;
  return JSON.stringify(rest);
}

/** The JSON merge patch that sets the status annotation, or undefined when the VMI already says so. */
export function vmiStatusPatch(currentAnnotations: Readonly<Record<string, string>> | undefined, status: VmiStatus): { metadata: { annotations: Record<string, string> } } | undefined {
  const current = currentAnnotations?.[STATUS_ANNOTATION];
  if (current !== undefined) {
    try {
      if (statusContent(JSON.parse(current)) === statusContent(status)) return undefined;
    } catch {
      // Not JSON: overwrite it.
    }
  }
  return { metadata: { annotations: { [STATUS_ANNOTATION]: JSON.stringify(status) } } };
}

// ---- agent report -> Events ---------------------------------------------------------------------

export interface PlannedEvent {
  /** Stable identity for deduplication. */
  key: string;
  reason: 'SpdkDiskFailed' | 'SpdkVolumesInvalid';
  message: string;
}

/** Kubernetes caps an Event message at 1 KiB. */
const MAX_MESSAGE = 1024;
const cap = (s: string): string => (s.length > MAX_MESSAGE ? `${s.slice(0, MAX_MESSAGE - 3)}...` : s);

/** Warning Events a VMI's status calls for: one per failed disk and one per input problem. */
export function eventsFor(status: Pick<VmiStatus, 'disks'>, problems: readonly string[]): PlannedEvent[] {
  const out: PlannedEvent[] = [];
  for (const p of problems) {
    if (p === NO_SLOT_PROBLEM) continue;
    out.push({ key: `SpdkVolumesInvalid:${p}`, reason: 'SpdkVolumesInvalid', message: cap(p) });
  }
  for (const d of status.disks) {
    if (d.phase !== 'Failed') continue;
    const message = `disk ${d.name}: ${d.message ?? 'failed'}`;
    out.push({ key: `SpdkDiskFailed:${message}`, reason: 'SpdkDiskFailed', message: cap(message) });
  }
  return out;
}

/**
 * Deduplication: the events of `planned` not already emitted for this VMI. A condition that
 * clears and comes back is reported again; one that persists, once.
 */
export function newEvents(previouslyEmitted: ReadonlySet<string>, planned: readonly PlannedEvent[]): PlannedEvent[] {
  return planned.filter((e) => !previouslyEmitted.has(e.key));
}

export interface EventBody {
  metadata: { generateName: string; namespace: string };
  involvedObject: { apiVersion: string; kind: string; name: string; namespace: string; uid: string };
  type: 'Warning';
  reason: string;
  message: string;
  source: { component: string; host: string };
  reportingComponent: string;
  reportingInstance: string;
  count: number;
  firstTimestamp: Date;
  lastTimestamp: Date;
}

export function eventBody(vmi: VmiRef, e: PlannedEvent, node: string, now: Date): EventBody {
  return {
    metadata: { generateName: `${vmi.name}.`, namespace: vmi.namespace },
    involvedObject: { apiVersion: 'kubevirt.io/v1', kind: 'VirtualMachineInstance', name: vmi.name, namespace: vmi.namespace, uid: vmi.uid },
    type: 'Warning',
    reason: e.reason,
    message: e.message,
    source: { component: 'kubevirt-spdk-agent', host: node },
    reportingComponent: 'kubevirt-spdk.io/agent',
    reportingInstance: node,
    count: 1,
    firstTimestamp: now,
    lastTimestamp: now,
  };
}

// ---- node cache state -> NodeImageCache (CachedImage.status is the controller's: src/controller/image-status.ts)

export const NodeImageCacheImageSchema = z.object({
  /** The CachedImage name (one entry per CachedImage; names of one content share `key`). */
  name: z.string(),
  /** The golden's content key (contract imageKey): what peers match on. */
  key: z.string().optional(),
  /** `wanted`: the node needs the image, holds none yet, and waits for one node (the seed) to read the origin. */
  phase: z.enum(['wanted', 'importing', 'hydrating', 'ready', 'failed']),
  /** Phase wanted, or importing as the seed: when the node announced it (RFC 3339); older announcements expire. */
  wantedAt: z.string().datetime().optional(),
  sizeBytes: z.number().int().nonnegative().optional(),
  clones: z.number().int().nonnegative().optional(),
  lastUsed: z.string().optional(),
  message: z.string().optional(),
  /** Phase hydrating: how much is local, 0..100. */
  hydratedPercent: z.number().min(0).max(100).optional(),
  /** Phase hydrating: the node it hydrates from, or `origin`. A node named here keeps its golden. */
  source: z.string().optional(),
  /** Where other nodes read this golden (read-only). */
  export: RemoteDiskRefSchema.optional(),
  /** Other nodes hydrating from this golden now. */
  peerReaders: z.number().int().nonnegative().optional(),
  /**
   * The ranges the image's first boot read (contract boot-profile.ts), for other nodes to
   * hydrate first. Unknown here: readers validate it apart (agent/boot-profile.ts), so that a
   * bad profile drops the profile only, never the node's golden as a peer source.
   */
  bootProfile: z.unknown().optional(),
});

/** `NodeImageCache.status` (see manifests/crds/nodeimagecache.yaml). */
export const NodeImageCacheStatusSchema = z.object({
  backend: z.enum(['spdk', 'qsd']),
  summary: z.string(),
  usedBytes: z.number().int().nonnegative(),
  updatedAt: z.string(),
  images: z.array(NodeImageCacheImageSchema),
  /** Migration target: the disks that stand alone here (kube/migration-view.ts; the sources read it). */
  migrationHydrated: MigrationHydratedSchema.optional(),
  /** Migration source: the exports the targets clone (kube/migration-view.ts). */
  migrationExports: MigrationExportsSchema.optional(),
});
export type NodeImageCacheStatus = z.output<typeof NodeImageCacheStatusSchema>;

/** What the agent adds to its status.json images: CachedImage names per key, and peer distribution. */
export interface CacheExtras {
  /** Content key -> CachedImage names (desired state); a key no CachedImage names any more is listed under its key. */
  names?: Readonly<Record<string, readonly string[]>>;
  info?: ReadonlyMap<string, GoldenInfo>;
  /** Content key -> when this node began to want it (ms): listed as phase wanted while no golden of it exists here. */
  wanted?: ReadonlyMap<string, number>;
}

/** The NodeImageCache status from what the agent observed (its status.json): one entry per CachedImage name. */
export function nodeImageCacheStatus(s: Pick<NodeStatus, 'backend' | 'images'>, updatedAt: string, extras: CacheExtras = {}): NodeImageCacheStatus {
  type Entry = z.output<typeof NodeImageCacheImageSchema>;
  // Images this node needs and holds none of yet: announced for the seed rule (image-peers.ts).
  const wanted: Entry[] = [...(extras.wanted ?? [])]
    .filter(([key]) => !s.images.some((i) => i.name === key))
    .flatMap(([key, at]) => (extras.names?.[key]?.length ? extras.names[key] : [key]).map((name) => ({ name, key, phase: 'wanted' as const, wantedAt: new Date(at).toISOString() })));
  const images = s.images
    .flatMap((i): Entry[] => {
      const info = extras.info?.get(i.name);
      const names = extras.names?.[i.name];
      const base = {
        phase: NodeImageCacheImageSchema.shape.phase.safeParse(i.phase).data ?? 'failed',
        sizeBytes: i.sizeBytes,
        clones: i.cloneCount,
        ...(i.phase === 'importing' && extras.wanted?.has(i.name) ? { wantedAt: new Date(extras.wanted.get(i.name) ?? 0).toISOString() } : {}),
        ...(i.lastUse ? { lastUsed: i.lastUse } : {}),
        ...(i.message ? { message: i.message } : {}),
        ...(info?.hydratedPercent !== undefined ? { hydratedPercent: Math.round(info.hydratedPercent) } : {}),
        ...(info?.source !== undefined ? { source: info.source } : {}),
        ...(info?.export !== undefined ? { export: info.export } : {}),
        ...(info?.peerReaders ? { peerReaders: info.peerReaders } : {}),
      };
      // The boot profile (up to 1024 ranges) once per golden, on its first name: readers match by key.
      return (names?.length ? names : [i.name]).map((name, k) => ({
        name,
        ...(extras.names ? { key: i.name } : {}),
        ...base,
        ...(i.bootProfile && k === 0 ? { bootProfile: i.bootProfile } : {}),
      }));
    })
    .concat(wanted)
    .sort((a, b) => a.name.localeCompare(b.name));
  const state = (i: (typeof images)[number]): string =>
    i.phase === 'ready' ? '' : i.phase === 'hydrating' ? `[hydrating ${i.hydratedPercent ?? 0}%${i.source ? ` from ${i.source}` : ''}]` : `[${i.phase}]`;
  const summary = images.length
    ? images.map((i) => `${i.name}${state(i)}${i.clones ? `(${i.clones} clone${i.clones === 1 ? '' : 's'})` : ''}`).join(', ')
    : 'none';
  // The cache's footprint: golden images only (clones are thin until written), each golden once.
  const byKey = new Map(images.map((i) => [i.key ?? i.name, i.sizeBytes ?? 0]));
  const usedBytes = [...byKey.values()].reduce((n, b) => n + b, 0);
  return { backend: s.backend.kind, summary, usedBytes, updatedAt, images };
}

/**
 * Every node's goldens as their NodeImageCaches say (entries of one key on one node counted
 * once). Another node's object is input: an export on a unix socket (a path on the reader's
 * host) is dropped unless `allowUnix` (a single-host setup, where this node exports on one too).
 */
export function peerGoldensOf(caches: readonly unknown[], opts: { allowUnix?: boolean } = {}): PeerGolden[] {
  const out = new Map<string, PeerGolden>();
  for (const raw of caches) {
    const o = raw as { metadata?: { name?: unknown }; status?: { images?: unknown; backend?: unknown } | null } | null;
    const node = o?.metadata?.name;
    if (typeof node !== 'string' || !Array.isArray(o?.status?.images)) continue;
    const backend = o.status.backend;
    const transport = backend === 'qsd' ? ('nbd' as const) : backend === 'spdk' ? ('nvmf-tcp' as const) : undefined;
    for (const item of o.status.images) {
      // One bad entry (an older agent, a hand edit) is skipped, never the whole node.
      const res = NodeImageCacheImageSchema.safeParse(item);
      if (!res.success) continue;
      const i = res.data;
      const key = i.key ?? i.name;
      const g: PeerGolden = {
        node,
        key,
        phase: i.phase,
        ...(i.export && (opts.allowUnix || !(i.export.transport === 'nbd' && i.export.address.kind === 'unix')) ? { export: i.export } : {}),
        ...(i.source ? { source: i.source } : {}),
        ...(i.peerReaders ? { peerReaders: i.peerReaders } : {}),
        ...((i.phase === 'wanted' || i.phase === 'importing') && i.wantedAt !== undefined ? { wantedAt: Date.parse(i.wantedAt) } : {}),
        ...((i.phase === 'wanted' || i.phase === 'importing') && transport ? { transport } : {}),
      };
      // CachedImage names of one content on one node are one golden: the first entry speaks for it.
      if (!out.has(`${node}\0${key}`)) out.set(`${node}\0${key}`, g);
    }
  }
  return [...out.values()];
}

/** Whether two statuses differ in anything but their timestamp. */
export const sameCacheStatus = (a: unknown, b: unknown): boolean => statusContent(a) === statusContent(b);
