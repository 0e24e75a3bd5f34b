import type { Vmi } from '../api/vmi.js';

export interface ConvertOptions {
  /** Directory of the vhost sockets inside the virt-launcher pod. */
  socketDir?: string;
}

export const DEFAULT_SOCKET_DIR = '/var/run/kubevirt-spdk';

/** Pure: libvirt domain XML + VMI -> domain XML with the VMI's SPDK disks. */
export function convertDomain(_domainXml: string, _vmi: Vmi, _options: ConvertOptions = {}): string {
  throw new Error('converter: not implemented yet');
}
