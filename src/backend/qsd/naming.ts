import { createHash } from 'node:crypto';
import { parseControllerName as parseLayoutName } from '../../contract/layout.js';
import { BackendError } from '../types.js';

/**
 * Pure naming rules of the qsd driver. QSD keeps no memory of our controller names, only of
 * export ids and node names, so the controller name is encoded reversibly in the export id
 * (observe() reads it back from `query-block-exports`) and the node name is a short hash of
 * it (QEMU node names are at most 31 characters).
 */

export const EXPORT_ID_PREFIX = 'vhost.';

/** `<slot>/<disk>` by the contract's layout rule, or BackendError 'invalid'. */
export function parseControllerName(name: string): { slot: string; disk: string } {
  const parts = parseLayoutName(name);
  if (!parts) {
    throw new BackendError(`controller name "${name}": must be "<slot>/<disk>": a slot-NN and a DNS-1123 label`, 'invalid');
  }
  return parts;
}

/** Image names and disk ids become file names. */
const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function checkFileName(what: string, name: string): string {
  if (!FILE_NAME.test(name) || name.length > 200) {
    throw new BackendError(`${what} "${name}": must match [A-Za-z0-9][A-Za-z0-9._-]* (at most 200 characters)`, 'invalid');
  }
  return name;
}

/** Export ids allow [A-Za-z0-9._-]; everything else (the '/' of the name) is escaped as _XX. */
export function exportIdFor(controllerName: string): string {
  return EXPORT_ID_PREFIX + controllerName.replace(/[^A-Za-z0-9.-]/g, (c) => `_${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** The controller name of one of our export ids, or undefined for an export we did not make. */
export function controllerNameOf(exportId: string): string | undefined {
  if (!exportId.startsWith(EXPORT_ID_PREFIX)) return undefined;
  const encoded = exportId.slice(EXPORT_ID_PREFIX.length);
  if (!/^([A-Za-z0-9.-]|_[0-9a-f]{2})*$/.test(encoded)) return undefined;
  return encoded.replace(/_([0-9a-f]{2})/g, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

/** Format and protocol node names of a controller's disk: unique per controller name. */
export function nodeNamesFor(controllerName: string): { format: string; file: string } {
  const h = createHash('sha256').update(controllerName).digest('hex').slice(0, 24);
  return { format: `k${h}`, file: `k${h}-f` };
}
