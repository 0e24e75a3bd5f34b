import { BootProfileSchema, bootProfileProblem, type BootProfile } from '../contract/boot-profile.js';
import type { ImageSpec } from '../backend/types.js';
import { silentLogger, type Logger } from '../log.js';

/**
 * Boot profiles from the cluster (the agent's side of boot-order prefetch): other nodes publish
 * in their NodeImageCache, per golden, the ranges its first boot read (recorded there, or
 * replayed from another node); a node that makes a golden of the same content key gets one of
 * them in its ImageSpec and hydrates those ranges first. Another node's object is input: a
 * profile that breaks a rule is refused with the node, the entry and the field named, and only
 * that profile is dropped (the golden itself, and the other nodes' profiles, still count).
 */

export interface ProfilesFromCaches {
  /** Content key -> a valid profile (the first node in name order that has one). */
  profiles: Map<string, BootProfile>;
  /** One line per refused profile: `NodeImageCache <node>: images[i].bootProfile.<field>: <rule>`. */
  problems: string[];
}

/** Pure: the valid profiles of every NodeImageCache, and what was refused. */
export function bootProfilesOf(caches: readonly unknown[]): ProfilesFromCaches {
  const profiles = new Map<string, BootProfile>();
  const problems: string[] = [];
  const nodes = caches
    .map((raw) => raw as { metadata?: { name?: unknown }; status?: { images?: unknown } | null } | null)
    .filter((o): o is { metadata: { name: string }; status?: { images?: unknown } | null } => typeof o?.metadata?.name === 'string')
    .sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  for (const o of nodes) {
    const images = o.status?.images;
    if (!Array.isArray(images)) continue;
    images.forEach((item: unknown, i) => {
      const entry = item as { name?: unknown; key?: unknown; bootProfile?: unknown } | null;
      if (entry?.bootProfile === undefined) return;
      const key = typeof entry.key === 'string' ? entry.key : typeof entry.name === 'string' ? entry.name : undefined;
      if (key === undefined) return;
      const problem = bootProfileProblem(entry.bootProfile, `images[${i}].bootProfile`);
      if (problem !== undefined) {
        problems.push(`NodeImageCache ${o.metadata.name}: ${problem}`);
        return;
      }
      if (!profiles.has(key)) profiles.set(key, BootProfileSchema.parse(entry.bootProfile));
    });
  }
  return { profiles, problems };
}

/** The latest profiles seen (cluster mode sets them on every view change); logs each refusal once. */
export class BootProfiles {
  private profiles = new Map<string, BootProfile>();
  private reported = new Set<string>();

  constructor(private readonly log: Logger = silentLogger) {}

  setCaches(caches: readonly unknown[]): void {
    const { profiles, problems } = bootProfilesOf(caches);
    this.profiles = profiles;
    for (const p of problems) {
      if (!this.reported.has(p)) this.log.warn({ event: 'boot-profile-refused', err: p }, 'a boot profile from another node breaks a rule; ignored');
    }
    this.reported = new Set(problems);
  }

  /** The spec with the cluster's profile of its key, if one is known. */
  withProfile(spec: ImageSpec): ImageSpec {
    const p = this.profiles.get(spec.name);
    return p && spec.bootProfile === undefined ? { ...spec, bootProfile: p } : spec;
  }
}
