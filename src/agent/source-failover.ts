import type { ImageSpec, ObservedImage, RemoteDiskRef } from '../backend/types.js';
import { chooseImageSource, ORIGIN, type PeerGolden } from './image-sources.js';

/**
 * Source failover: a lazy golden whose source (a peer that died or left, or the origin) has
 * been unreachable for longer than a bound moves its hydration onto another source of the same
 * content: the next peer by the usual choice (chooseImageSource, the dead one skipped), finally
 * the origin. Nothing is lost by switching: what is hydrated stays, the new source serves the
 * same bytes (same content key), and the sha256 is checked after hydration as always. The
 * decision is pure (chooseFailovers); SourceFailover adds the memory of switches that failed
 * just now; the executor makes the backend call (backend.retargetImage).
 */

/** Where a local golden hydrates from, as image-sources.json records it. */
export interface RecordedSource {
  node: string;
  ref?: RemoteDiskRef;
}

/** Switch `image.name`'s hydration from `from` to `to` (a peer node, or ORIGIN). */
export interface RetargetImageAction {
  kind: 'retargetImage';
  /** The spec the backend switches to: `peer` set for a peer, absent for the origin. */
  image: ImageSpec;
  from: string;
  to: string;
  /** How long the source had been unreachable when this was decided. */
  unreachableMs: number;
}

export interface FailoverInput {
  self: string;
  now: number;
  /** Unreachable for at least this long before switching. */
  afterMs: number;
  images: readonly ObservedImage[];
  /** The catalog (by content key) the golden's spec comes from. */
  specs: readonly ImageSpec[];
  /** What each local golden hydrates from now (no entry: the origin). */
  sources: Readonly<Record<string, RecordedSource>>;
  /** The other nodes' goldens (their NodeImageCaches). */
  goldens: readonly PeerGolden[];
  transport: RemoteDiskRef['transport'];
  /** Whether the backend can switch a golden's source at all, and onto the origin too (qsd). */
  canRetarget: boolean;
  canRetargetToOrigin: boolean;
  /** Per image, sources that failed as a new source just now: not chosen again yet. */
  failed?: ReadonlyMap<string, ReadonlySet<string>>;
}

export type FailoverDecision = RetargetImageAction | { kind: 'reportBlocked'; object: 'image'; name: string; reason: string };

const seconds = (ms: number): string => `${Math.round(ms / 1000)}s`;

/**
 * For each hydrating golden whose source has been unreachable for `afterMs` or longer: a switch
 * to the best other source, or a report saying why it keeps waiting. Pure. A golden read from a
 * peer goes to the next peer, else to its origin (when the origin is http(s): what can be read
 * lazily); one read from the origin goes to a peer, else waits. Only raw images (peers serve the
 * content, which a qcow2 image's sha256 does not describe).
 */
export function chooseFailovers(input: FailoverInput): FailoverDecision[] {
  const out: FailoverDecision[] = [];
  for (const img of input.images) {
    const since = img.sourceUnreachableSinceMs;
    if (img.phase !== 'hydrating' || since === undefined) continue;
    const unreachableMs = input.now - since;
    if (unreachableMs < input.afterMs) continue;
    const from = input.sources[img.name]?.node ?? ORIGIN;
    const waiting = (why: string): void => {
      out.push({ kind: 'reportBlocked', object: 'image', name: img.name, reason: `hydration source ${from} unreachable for ${seconds(unreachableMs)}; ${why}` });
    };
    if (!input.canRetarget) {
      waiting('this backend cannot switch a hydrating image to another source: waiting for it to come back');
      continue;
    }
    const spec = input.specs.find((s) => s.name === img.name);
    if (!spec) {
      waiting('the image is no longer in the catalog: waiting for it to come back');
      continue;
    }
    if (spec.format !== 'raw') {
      waiting('only raw images are read from another source: waiting for it to come back');
      continue;
    }
    const failed = input.failed?.get(img.name);
    const skip = new Set([from, ...(failed ?? [])]);
    const choice = chooseImageSource({ self: input.self, key: img.name, goldens: input.goldens, transport: input.transport, skip });
    if (choice.kind === 'peer') {
      out.push({ kind: 'retargetImage', image: { ...spec, peer: choice.ref }, from, to: choice.node, unreachableMs });
      continue;
    }
    const { peer: _peer, ...fromOrigin } = spec;
    if (from !== ORIGIN && !skip.has(ORIGIN) && input.canRetargetToOrigin && 'http' in spec.source) {
      out.push({ kind: 'retargetImage', image: fromOrigin, from, to: ORIGIN, unreachableMs });
      continue;
    }
    waiting(`no other node holds it and ${input.canRetargetToOrigin ? 'the origin cannot serve it lazily' : 'this backend cannot read the origin instead'}: waiting for it to come back`);
  }
  return out;
}

/**
 * When the next golden that is paused now becomes due for a switch (ms since the epoch), so that
 * a round runs then and not only at the next resync. Pure.
 */
export function nextFailoverDue(images: readonly ObservedImage[], afterMs: number, now: number): number | undefined {
  const due = images.flatMap((i) => (i.phase === 'hydrating' && i.sourceUnreachableSinceMs !== undefined && i.sourceUnreachableSinceMs + afterMs > now ? [i.sourceUnreachableSinceMs + afterMs] : []));
  return due.length ? Math.min(...due) : undefined;
}

export interface SourceFailoverOptions {
  self: string;
  afterMs: number;
  transport: RemoteDiskRef['transport'];
  canRetarget: boolean;
  canRetargetToOrigin: boolean;
  /** The other nodes' goldens and this node's recorded sources now (ImagePeers). */
  view(): Promise<{ goldens: readonly PeerGolden[]; sources: Readonly<Record<string, RecordedSource>> }>;
  /** Records the source a golden hydrates from (image-sources.json, published in the NodeImageCache). */
  record(name: string, source: RecordedSource): Promise<void>;
}

/**
 * The agent's memory around the pure decision: a new source that failed is not chosen again for
 * `afterMs` (then it may be tried again: a peer that restarted is as good as any).
 */
export class SourceFailover {
  private readonly failed = new Map<string, Map<string, number>>();

  constructor(private readonly o: SourceFailoverOptions) {}

  get afterMs(): number {
    return this.o.afterMs;
  }

  view(): ReturnType<SourceFailoverOptions['view']> {
    return this.o.view();
  }

  async plan(images: readonly ObservedImage[], specs: readonly ImageSpec[], now: number): Promise<FailoverDecision[]> {
    const failed = new Map<string, ReadonlySet<string>>();
    for (const [image, nodes] of this.failed) {
      for (const [node, at] of nodes) if (now - at >= this.o.afterMs) nodes.delete(node);
      if (nodes.size === 0 || !images.some((i) => i.name === image && i.sourceUnreachableSinceMs !== undefined)) this.failed.delete(image);
      else failed.set(image, new Set(nodes.keys()));
    }
    const { goldens, sources } = await this.o.view();
    return chooseFailovers({ self: this.o.self, now, afterMs: this.o.afterMs, images, specs, sources, goldens, transport: this.o.transport, canRetarget: this.o.canRetarget, canRetargetToOrigin: this.o.canRetargetToOrigin, failed });
  }

  /**
   * Before the backend switches: the new source is recorded (the new peer sees itself named in
   * this node's NodeImageCache and keeps its golden meanwhile).
   */
  async willSwitch(a: RetargetImageAction): Promise<void> {
    await this.o.record(a.image.name, a.image.peer ? { node: a.to, ref: a.image.peer } : { node: ORIGIN });
  }

  /** The switch to `a.to` failed: the old source is recorded again, and another is chosen next time. */
  async switchFailed(a: RetargetImageAction, previous: RecordedSource | undefined, now: number): Promise<void> {
    const nodes = this.failed.get(a.image.name) ?? new Map<string, number>();
    nodes.set(a.to, now);
    this.failed.set(a.image.name, nodes);
    await this.o.record(a.image.name, previous ?? { node: ORIGIN });
  }
}
