import { z } from 'zod';
import { parseDocument } from 'yaml';
import { SLOT_ANNOTATION, SLOT_RE, VOLUMES_ANNOTATION, parseVolumesAnnotation, type SpdkVolume } from './volumes.js';
import { FILE_YAML_LIMITS, checkYamlLimits, yamlProblems } from './yaml.js';
import { ValidationError, apiErrorMap, formatZodError } from './errors.js';

/**
 * The parts of a KubeVirt VirtualMachineInstance that we read. Everything else passes
 * through untouched (KubeVirt owns that schema).
 */
export const VmiSchema = z
  .object({
    apiVersion: z.string().optional(),
    kind: z.string().optional(),
    metadata: z
      .object({
        name: z.string().min(1),
        namespace: z.string().default('default'),
        uid: z.string().optional(),
        annotations: z.record(z.string()).default({}),
        labels: z.record(z.string()).default({}),
      })
      .passthrough(),
    spec: z
      .object({
        domain: z
          .object({
            cpu: z.object({ cores: z.number().optional(), sockets: z.number().optional(), threads: z.number().optional() }).passthrough().optional(),
            devices: z
              .object({ disks: z.array(z.object({ name: z.string() }).passthrough()).default([]) })
              .passthrough()
              .default({}),
          })
          .passthrough()
          .default({}),
        volumes: z.array(z.object({ name: z.string() }).passthrough()).default([]),
      })
      .passthrough()
      .default({}),
    status: z.record(z.unknown()).optional(),
  })
  .passthrough();

export type Vmi = z.output<typeof VmiSchema>;

export function parseVmi(doc: unknown, where = 'vmi'): Vmi {
  const res = VmiSchema.safeParse(doc, { errorMap: apiErrorMap });
  if (!res.success) throw new ValidationError(formatZodError(where, res.error));
  return res.data;
}

export function parseVmiYaml(text: string, where = 'vmi'): Vmi {
  let doc: unknown;
  checkYamlLimits(text, where, FILE_YAML_LIMITS);
  try {
    const parsed = parseDocument(text, { uniqueKeys: true });
    const problems = yamlProblems(parsed, where);
    if (problems.length) throw new ValidationError(problems);
    doc = parsed.toJS();
  } catch (e) {
    if (e instanceof ValidationError) throw e;
    throw new ValidationError([`${where}: not valid YAML: ${(e as Error).message.split('\n')[0]}`]);
  }
  return parseVmi(doc, where);
}

/**
 * Our disks carry the libvirt alias `ua-spdk-<name>` (KubeVirt keeps `ua-` aliases). A VMI disk
 * or volume named `spdk-<name>` gets the same alias from KubeVirt: such a pair is refused.
 */
export const SPDK_ALIAS_NAME_PREFIX = 'spdk-';
/** KubeVirt's switch for memfd-backed guest memory with hugepages (`"false"` turns it off). */
export const MEMFD_ANNOTATION = 'kubevirt.io/memfd';

/** The annotation as a field path, the prefix of every message about the volumes of a VMI. */
export const VOLUMES_FIELD = `metadata.annotations["${VOLUMES_ANNOTATION}"]`;

export function hasSpdkVolumes(vmi: Vmi): boolean {
  return VOLUMES_ANNOTATION in vmi.metadata.annotations;
}

/** vCPUs of the VMI, the default virtqueue count. */
export function vcpuCount(vmi: Vmi): number {
  const cpu = vmi.spec.domain.cpu;
  return Math.max(1, (cpu?.cores ?? 1) * (cpu?.sockets ?? 1) * (cpu?.threads ?? 1));
}

/**
 * The VMI's SPDK volumes, validated, including the rule that needs the VMI itself: our disk
 * names must not clash with the VMI's own disks and volumes.
 */
export function spdkVolumesOf(vmi: Vmi): SpdkVolume[] {
  const text = vmi.metadata.annotations[VOLUMES_ANNOTATION];
  if (text === undefined) return [];
  const prefix = VOLUMES_FIELD;
  const vols = parseVolumesAnnotation(text, prefix);
  const own = new Set([...vmi.spec.domain.devices.disks.map((d) => d.name), ...vmi.spec.volumes.map((v) => v.name)]);
  const problems = vols.flatMap((v, i) => {
    if (own.has(v.name)) return [`${prefix}[${i}].name: "${v.name}" clashes with a disk or volume of the VMI itself`];
    const alias = `${SPDK_ALIAS_NAME_PREFIX}${v.name}`;
    if (own.has(alias)) return [`${prefix}[${i}].name: "${v.name}" clashes with the VMI's own disk or volume "${alias}" (both would get the libvirt alias "ua-${alias}")`];
    return [];
  });
  if (problems.length) throw new ValidationError(problems);
  return vols;
}

export function slotOf(vmi: Vmi): string | undefined {
  const slot = vmi.metadata.annotations[SLOT_ANNOTATION];
  if (slot === undefined) return undefined;
  if (!SLOT_RE.test(slot)) throw new ValidationError([`metadata.annotations["${SLOT_ANNOTATION}"]: "${slot}" must look like slot-07`]);
  return slot;
}

/** A stable identity; standalone VMI files may omit metadata.uid. */
export function vmiUid(vmi: Vmi): string {
  return vmi.metadata.uid ?? `standalone-${vmi.metadata.namespace}-${vmi.metadata.name}`;
}
