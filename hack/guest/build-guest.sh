#!/usr/bin/env bash
# Builds the test guest into <repo>/.cache/guest/: a Debian distro kernel (vmlinuz) and a tiny
# busybox initramfs (initramfs.gz) with the virtio-blk modules and hack/guest/init.sh as /init.
# Idempotent: when the kernel version and the inputs are unchanged it only prints the paths.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE="$ROOT/.cache"
OUT="$CACHE/guest"
DEBS="$CACHE/debs"
# Loaded in this order by /init: each needs the ones before it.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk)

log() { echo "build-guest: $*" >&2; }

# The kernel that Debian's meta package points at, e.g. linux-image-6.1.0-56-amd64.
kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
PKG=$(kernel_pkg || true)
if [ -z "$PKG" ]; then
  log "linux-image-amd64 unknown to apt; running apt-get update"
  apt-get update -qq
  PKG=$(kernel_pkg)
fi
[ -n "$PKG" ] || { log "cannot resolve linux-image-amd64 to a kernel package"; exit 1; }
KVER=${PKG#linux-image-}

# Rebuild when the kernel or any input of the initramfs changed.
STAMP_WANT=$(cat "$HERE/init.sh" "${BASH_SOURCE[0]}" /usr/bin/busybox | sha256sum | cut -c1-16)
STAMP_WANT="$KVER $STAMP_WANT"
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP_WANT" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initramfs.gz" ]; then
  log "up to date: kernel $KVER in $OUT"
  exit 0
fi

command -v busybox >/dev/null || { log "busybox-static is missing (make deps)"; exit 1; }
command -v cpio >/dev/null || { log "cpio is missing (make deps)"; exit 1; }
if ! { LC_ALL=C ldd /usr/bin/busybox 2>&1 || true; } | grep -q 'not a dynamic executable'; then
  # A dynamic busybox would need its libc in the initramfs too.
  log "/usr/bin/busybox is not static (install busybox-static)"
  exit 1
fi

mkdir -p "$DEBS" "$OUT"
DEB=$(ls "$DEBS/${PKG}_"*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$DEB" ]; then
  log "downloading $PKG"
  # apt-get download writes into the current directory; _apt may not be able to enter it,
  # in which case apt falls back to downloading as root (a harmless warning).
  (cd "$DEBS" && apt-get download -q "$PKG" 2>&1 | grep -v 'unsandboxed' >&2 || true)
  DEB=$(ls "$DEBS/${PKG}_"*.deb 2>/dev/null | head -n 1 || true)
  [ -n "$DEB" ] || { log "apt-get download $PKG failed"; exit 1; }
fi

WORK=$(mktemp -d "$CACHE/guest-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Extract only what we need (the full package unpacks to hundreds of MB).
log "extracting kernel and virtio modules from $(basename "$DEB")"
dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$WORK" --wildcards \
  "./boot/vmlinuz-$KVER" \
  "./lib/modules/$KVER/kernel/drivers/virtio/*" \
  "./lib/modules/$KVER/kernel/drivers/block/virtio_blk.ko*"

RD="$WORK/initramfs"
mkdir -p "$RD"/{bin,dev,proc,sys,tmp}
cp /usr/bin/busybox "$RD/bin/busybox"
ln -s busybox "$RD/bin/sh"
for m in "${MODULES[@]}"; do
  src=$(find "$WORK/lib/modules/$KVER/kernel/drivers" -name "$m.ko*" | head -n 1)
  [ -n "$src" ] || { log "module $m not found in $PKG"; exit 1; }
  rel=${src#"$WORK/"}
  dst="$RD/$rel"
  mkdir -p "$(dirname "$dst")"
  # busybox insmod reads plain .ko files only: decompress here if the distro compresses them.
  case "$src" in
    *.ko) cp "$src" "$dst" ;;
    *.ko.xz) xz -dc "$src" >"${dst%.xz}" ;;
    *.ko.zst) zstd -qdc "$src" >"${dst%.zst}" ;;
    *.ko.gz) gzip -dc "$src" >"${dst%.gz}" ;;
    *) log "unknown module format: $src"; exit 1 ;;
  esac
done
install -m 0755 "$HERE/init.sh" "$RD/init"

(cd "$RD" && find . -print0 | cpio --null -o -H newc --quiet | gzip -6) >"$WORK/initramfs.gz"
cp "$WORK/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initramfs.gz" "$OUT/initramfs.gz"
echo "$KVER" >"$OUT/kernel-version"
echo "$STAMP_WANT" >"$OUT/stamp"
log "built kernel $KVER: $OUT/vmlinuz, $OUT/initramfs.gz ($(du -h "$OUT/initramfs.gz" | cut -f1))"
