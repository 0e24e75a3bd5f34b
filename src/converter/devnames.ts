/**
 * libvirt disk target names: vda..vdz, vdaa..vdaz, ... (bijective base 26, as libvirt's
 * virDiskNameToIndex reads them).
 */
export function diskTargetName(prefix: string, index: number): string {
  let n = index + 1;
  let suffix = '';
  while (n > 0) {
    const rem = (n - 1) % 26;
    suffix = String.fromCharCode(97 + rem) + suffix;
    n = Math.floor((n - 1) / 26);
  }
  return `${prefix}${suffix}`;
}

/**
 * KubeVirt names a disk that is not in its own map (a hot-plugged one) with the lowest free
 * index below 26^3 (virt-launcher's converter, MakeDeviceName), counting only the VMI's own
 * disks: it does not know ours. Names at index 26^3 and above are out of its reach.
 */
export const KUBEVIRT_DEVICE_INDEX_LIMIT = 26 * 26 * 26;
/** The last three-letter name, `vdzzz`: our names count down from here. */
export const OUR_TOP_DEVICE_INDEX = 26 + 26 * 26 + 26 * 26 * 26 - 1;

/**
 * Target names for our disks that no KubeVirt disk can take now or after a hot-plug: from
 * `vdzzz` downwards, skipping names already in the domain. Throws past KubeVirt's range.
 */
export function ourTargetNames(prefix: string, taken: ReadonlySet<string>, count: number): string[] {
  const out: string[] = [];
  for (let i = OUR_TOP_DEVICE_INDEX; out.length < count; i--) {
    if (i < KUBEVIRT_DEVICE_INDEX_LIMIT) throw new RangeError(`no free ${prefix} target name above KubeVirt's range for ${count} disks`);
    const name = diskTargetName(prefix, i);
    if (!taken.has(name)) out.push(name);
  }
  return out;
}
