import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { parseCachedImages } from '../api/cachedimage.js';
import { ValidationError } from '../api/errors.js';
import { parseVmi, parseVmiYaml, slotOf, type Vmi } from '../api/vmi.js';
import { FILE_YAML_LIMITS, checkYamlLimits } from '../api/yaml.js';
import type { ImageSpec } from '../backend/types.js';
import { buildDesired, imageSpecOf, type DesiredState, type ViewVmi } from './desired.js';

/**
 * The standalone desired state: VMI YAML files in a directory and a CachedImage file. A file
 * that stops parsing keeps its VMI alive (its last good form, or at least its name), so that
 * a typo never deletes a VM's disks; it is reported with the file name and field.
 */
export class StandaloneSource {
  private readonly lastGood = new Map<string, Vmi>();
  private lastImages: ImageSpec[] = [];

  constructor(
    readonly vmisDir: string,
    readonly imagesFile: string,
  ) {}

  async load(slotHolder?: (slot: string) => string | undefined): Promise<DesiredState> {
    const problems: string[] = [];
    let images = this.lastImages;
    try {
      images = parseCachedImages(await readFile(this.imagesFile, 'utf8'), path.basename(this.imagesFile)).map(imageSpecOf);
      this.lastImages = images;
    } catch (e) {
      problems.push(e instanceof ValidationError ? e.problems.join('; ') : `${path.basename(this.imagesFile)}: ${(e as Error).message}`);
    }
    const names = (await readdir(this.vmisDir)).filter((f) => /\.(ya?ml|json)$/.test(f) && !f.startsWith('.')).sort();
    const inputs: ViewVmi[] = [];
    const seen = new Set<string>();
    for (const f of names) {
      seen.add(f);
      let text: string;
      try {
        text = await readFile(path.join(this.vmisDir, f), 'utf8');
      } catch (e) {
        // Removed between readdir and read: it is gone.
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw e;
      }
      try {
        const vmi = parseVmiYaml(text, f);
        this.lastGood.set(f, vmi);
        inputs.push(standaloneVmi(f, vmi));
      } catch (e) {
        const msgs = e instanceof ValidationError ? e.problems : [`${f}: ${(e as Error).message}`];
        const known = this.lastGood.get(f) ?? identityOnly(text);
        if (known) inputs.push(standaloneVmi(f, known, msgs));
        else problems.push(...msgs);
      }
    }
    for (const f of this.lastGood.keys()) if (!seen.has(f)) this.lastGood.delete(f);
    return buildDesired({ vmis: inputs, images, problems }, slotHolder ? { slotHolder } : {});
  }
}

/**
 * A VMI file as the node view takes it: in standalone mode its `kubevirt-spdk.io/slot`
 * annotation stands in for the device plugin, read here at the edge (a bad one is a problem
 * of that VMI).
 */
export function standaloneVmi(origin: string, vmi: Vmi, problems: string[] = []): ViewVmi {
  let slot: string | undefined;
  const all = [...problems];
  try {
    slot = slotOf(vmi);
  } catch (e) {
    all.push(...(e instanceof ValidationError ? e.problems : [String(e)]));
  }
  return { origin, vmi, ...(slot !== undefined ? { slot } : {}), ...(all.length ? { problems: all } : {}) };
}

/** Name, namespace and uid of a VMI whose file does not validate, if they can be read at all. */
function identityOnly(text: string): Vmi | undefined {
  try {
    // Best effort on a file already refused: its YAML warnings are in the refusal, not printed again.
    // The limits first: a file refused for its depth must not reach the composer here either.
    checkYamlLimits(text, 'vmi', FILE_YAML_LIMITS);
    const doc = parseYaml(text, { logLevel: 'error' }) as { metadata?: { name?: unknown; namespace?: unknown; uid?: unknown } } | null;
    const m = doc?.metadata;
    if (!m || typeof m.name !== 'string') return undefined;
    return parseVmi({
      metadata: { name: m.name, ...(typeof m.namespace === 'string' ? { namespace: m.namespace } : {}), ...(typeof m.uid === 'string' ? { uid: m.uid } : {}) },
    });
  } catch {
    return undefined;
  }
}
