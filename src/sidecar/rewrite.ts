/**
 * The one domain rewrite behind both KubeVirt protocols (hook sidecar OnDefineDomain and VEP 190
 * plugin MutateDomain): VMI JSON + domain XML -> domain XML, by the pure converter. No I/O.
 */
import { ValidationError } from '../api/errors.js';
import { hasSpdkVolumes, parseVmi, spdkVolumesOf } from '../api/vmi.js';
import { convertDomain } from '../converter/index.js';
import { decodeUtf8Strict } from '../converter/utf8.js';
import type { Logger } from '../log.js';

export interface RewriteInput {
  /** The libvirt domain XML as virt-launcher built it. */
  domainXML: Buffer;
  /** The VirtualMachineInstance, JSON encoded. */
  vmi: Buffer;
}

/** Throws ValidationError for input it refuses; a VMI without our annotation passes unchanged. */
export function rewriteDomain(input: RewriteInput, vhostSocketDir: string | undefined, logger: Logger): Buffer {
  let doc: unknown;
  try {
    doc = JSON.parse(decodeUtf8Strict(input.vmi, 'vmi'));
  } catch (e) {
    if (e instanceof ValidationError) throw e;
    throw new ValidationError([`vmi: not valid JSON: ${(e as Error).message}`]);
  }
  const vmi = parseVmi(doc);
  const log = logger.child({ vmi: `${vmi.metadata.namespace}/${vmi.metadata.name}`, uid: vmi.metadata.uid });
  if (!hasSpdkVolumes(vmi)) {
    log.debug('no kubevirt-spdk.io/volumes annotation: domain unchanged');
    return input.domainXML;
  }
  const out = convertDomain(decodeUtf8Strict(input.domainXML, 'domain XML'), vmi, vhostSocketDir === undefined ? {} : { socketDir: vhostSocketDir });
  log.info({ disks: spdkVolumesOf(vmi).map((v) => v.name) }, 'domain rewritten with vhost-user disks');
  return Buffer.from(out, 'utf8');
}
