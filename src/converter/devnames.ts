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

/** The first `count` names with `prefix` that are not in `taken`, lowest first. */
export function freeTargetNames(prefix: string, taken: ReadonlySet<string>, count: number): string[] {
  const out: string[] = [];
  for (let i = 0; out.length < count; i++) {
    const name = diskTargetName(prefix, i);
    if (!taken.has(name)) out.push(name);
  }
  return out;
}
