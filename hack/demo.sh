#!/usr/bin/env bash
# make demo: one VM, one SPDK-style disk, on this machine, without Kubernetes.
#
#   golden image -> thin clone of it -> vhost-user-blk socket -> domain XML rewritten by the
#   converter -> libvirt boots the VM -> the guest reads the image and writes to its clone.
#
# Needs root (system libvirtd, socket ownership) and `make deps`. Cleans up after itself.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DEMO="$HERE/demo"
GUEST="$ROOT/.cache/guest"
VIRSH=(virsh -q -c qemu:///system)
DOMAIN=default_vmi-demo
DISK=rootdisk
SLOT=slot-01
SEQ_RECORDS=20
# The product's contract: QEMU in virt-launcher runs as uid/gid 107 (group kvm on Debian, which
# libvirt's QEMU user is in here too), so the socket is 107:107 0660.
SOCKET_UID=107 SOCKET_GID=107 SOCKET_MODE=0660

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
die() { printf '\ndemo: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (the system libvirtd and the socket's owner need it)"
for cmd in virsh libvirtd virtlogd qemu-img qemu-storage-daemon qemu-system-x86_64 npx; do
  command -v "$cmd" >/dev/null || die "$cmd is missing: run make deps"
done
bash "$HERE/guest/build-guest.sh" 2>/dev/null || die "building the test guest failed: bash hack/guest/build-guest.sh"

# Short path: the sockets live in here (sun_path is 107 bytes).
WORK=$(mktemp -d /tmp/ksdemo.XXXXXX)
chmod 0755 "$WORK" # libvirt's QEMU (not root) reads the kernel and opens the sockets in here
QSD_PID="" LIBVIRTD_PID="" VIRTLOGD_PID=""

cleanup() {
  set +e
  if "${VIRSH[@]}" dominfo "$DOMAIN" >/dev/null 2>&1; then
    "${VIRSH[@]}" destroy "$DOMAIN" >/dev/null 2>&1
    "${VIRSH[@]}" undefine "$DOMAIN" >/dev/null 2>&1
  fi
  [ -n "$QSD_PID" ] && kill "$QSD_PID" 2>/dev/null && wait "$QSD_PID" 2>/dev/null
  [ -n "$LIBVIRTD_PID" ] && kill "$LIBVIRTD_PID" 2>/dev/null && wait "$LIBVIRTD_PID" 2>/dev/null
  [ -n "$VIRTLOGD_PID" ] && kill "$VIRTLOGD_PID" 2>/dev/null && wait "$VIRTLOGD_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# libvirt without systemd: start the daemons as our children, stop them at the end.
ensure_libvirt() {
  "${VIRSH[@]}" version >/dev/null 2>&1 && return 0
  if [ ! -S /run/libvirt/virtlogd-sock ]; then
    virtlogd >/dev/null 2>&1 &
    VIRTLOGD_PID=$!
  fi
  libvirtd >/dev/null 2>&1 &
  LIBVIRTD_PID=$!
  for _ in $(seq 1 150); do
    "${VIRSH[@]}" version >/dev/null 2>&1 && { say "started libvirtd (pid $LIBVIRTD_PID) for the demo"; return 0; }
    sleep 0.2
  done
  die "libvirtd did not come up"
}

# Fills {{NAME}} placeholders: fill FILE NAME=VALUE...
fill() {
  local file=$1 text
  shift
  text=$(cat "$file")
  for kv in "$@"; do text=${text//"{{${kv%%=*}}}"/${kv#*=}}; done
  printf '%s\n' "$text"
}

# --- the steps --------------------------------------------------------------------------

make_golden_image() {
  bold "1. The golden image (a CachedImage)"
  GOLDEN="$WORK/images/demo-golden.raw"
  mkdir -p "$WORK/images"
  GOLDEN_MARKER="KS-GOLDEN demo-golden made $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  truncate -s 64M "$GOLDEN"
  printf '%s\n' "$GOLDEN_MARKER" | dd of="$GOLDEN" conv=notrunc status=none
  GOLDEN_SHA=$(sha256sum "$GOLDEN" | cut -d' ' -f1)
  fill "$DEMO/images.yaml" "GOLDEN_PATH=$GOLDEN" "GOLDEN_SHA256=$GOLDEN_SHA" >"$WORK/images.yaml"
  say "file    $GOLDEN (64 MiB raw, sparse)"
  say "sector0 \"$GOLDEN_MARKER\""
  say "sha256  $GOLDEN_SHA"
}

# Provisions the VMI's disk: a thin clone of the golden image served as vhost-user-blk on
# $SOCKET, as the node agent does (kubevirt-spdk agent --standalone --backend qsd ... --once).
provision_disk() {
  bold "2. Provision the disk: thin clone + vhost-user-blk socket"
  mkdir -p "$WORK/state" "$WORK/vhost/$SLOT"
  CLONE="$WORK/state/$DISK.qcow2"
  SOCKET="$WORK/vhost/$SLOT/$DISK"
  qemu-img create -q -f qcow2 -b "$GOLDEN" -F raw "$CLONE"
  say "clone   $CLONE (qcow2 overlay on the golden image: $(du -k "$CLONE" | cut -f1) KiB, no copy)"
  # writethrough: the guest sees a write-through disk and never flushes, so the backend must
  # not keep qcow2 metadata in memory only (it would be lost if the backend crashed).
  qemu-storage-daemon \
    --blockdev "driver=file,node-name=file0,filename=$CLONE" \
    --blockdev "driver=qcow2,node-name=disk0,file=file0" \
    --export "type=vhost-user-blk,id=$DISK,node-name=disk0,addr.type=unix,addr.path=$SOCKET,writable=on,writethrough=on" \
    >"$WORK/qsd.log" 2>&1 &
  QSD_PID=$!
  for _ in $(seq 1 100); do [ -S "$SOCKET" ] && break; sleep 0.1; done
  [ -S "$SOCKET" ] || die "qemu-storage-daemon did not create $SOCKET: $(cat "$WORK/qsd.log")"
  chown "$SOCKET_UID:$SOCKET_GID" "$SOCKET"
  chmod "$SOCKET_MODE" "$SOCKET"
  say "socket  $SOCKET ($(stat -c '%u:%g %a' "$SOCKET"), served by qemu-storage-daemon pid $QSD_PID)"
}

convert_domain() {
  bold "3. Rewrite the domain XML (what the hook sidecar does in KubeVirt)"
  cp "$GUEST/vmlinuz" "$GUEST/initramfs.gz" "$WORK/"
  CONSOLE="$WORK/console.log"
  fill "$DEMO/domain.xml" "KERNEL=$WORK/vmlinuz" "INITRD=$WORK/initramfs.gz" \
    "CMDLINE=console=ttyS0 quiet panic=-1 ks.mode=e2e ks.seq=$SEQ_RECORDS ks.tag=demo-$$" \
    "CONSOLE_LOG=$CONSOLE" >"$WORK/domain-in.xml"
  (cd "$ROOT" && npx --no-install tsx src/cli/main.ts convert --vmi "$DEMO/vmi.yaml" \
    --domain "$WORK/domain-in.xml" --socket-dir "$WORK/vhost/$SLOT") >"$WORK/domain.xml"
  say "kubevirt-spdk convert --vmi hack/demo/vmi.yaml --domain domain-in.xml --socket-dir .../$SLOT"
  diff -u --label before --label after "$WORK/domain-in.xml" "$WORK/domain.xml" | sed 's/^/   /' || true
  if command -v virt-xml-validate >/dev/null; then
    local out
    out=$(virt-xml-validate "$WORK/domain.xml" domain 2>&1) || die "the converted domain does not validate: $out"
    say "virt-xml-validate: ok"
  fi
}

boot_vm() {
  bold "4. libvirt boots the VM (TCG); the guest's console:"
  "${VIRSH[@]}" define "$WORK/domain.xml" >/dev/null
  "${VIRSH[@]}" start "$DOMAIN" >/dev/null
  local deadline=$((SECONDS + 120)) shown=0 line seqs="" result=""
  while :; do
    mapfile -t lines < <(grep -a '^KS: ' "$CONSOLE" 2>/dev/null | tr -d '\r')
    while [ "$shown" -lt "${#lines[@]}" ]; do
      line=${lines[$shown]#KS: }
      shown=$((shown + 1))
      case "$line" in
        SEQ\ *) seqs+="${line#SEQ } " ;;
        STOPPED\ *) say "wrote  one 4 KiB record per number, each O_DIRECT + fsync: ${seqs% }" ;;
        GOLDEN\ *) say "read   \"${line#GOLDEN }\"  (sector 0, through the clone)" ;;
        MARKER\ OK\ *) say "wrote  \"KS-GUEST ${line#MARKER OK }\" at 1 MiB, read it back: ok" ;;
        VERIFY\ *) result=$line; say "verify ${line#VERIFY }" ;;
        POWEROFF) say "poweroff" ;;
        *) say "$line" ;;
      esac
      case "$line" in FAIL*) die "the guest failed: $line" ;; esac
    done
    [ -n "$result" ] && ! "${VIRSH[@]}" domstate "$DOMAIN" 2>/dev/null | grep -q running && break
    [ "$SECONDS" -lt "$deadline" ] || die "the guest did not finish in 120 s; console: $(tail -5 "$CONSOLE")"
    sleep 0.5
  done
  case "$result" in "VERIFY OK "*) ;; *) die "the guest could not verify its writes: $result" ;; esac
}

check_result() {
  bold "5. After the VM powered off"
  kill "$QSD_PID" && wait "$QSD_PID" 2>/dev/null || true
  QSD_PID=""
  local now
  now=$(sha256sum "$GOLDEN" | cut -d' ' -f1)
  [ "$now" = "$GOLDEN_SHA" ] || die "the golden image changed: $now"
  say "golden image sha256 unchanged: $now"
  qemu-img convert -O raw "$CLONE" "$WORK/clone.raw"
  say "clone at 1 MiB: \"$(dd if="$WORK/clone.raw" bs=4096 skip=256 count=1 status=none | tr -d '\0' | head -n 1)\""
  say "clone size on disk: $(du -k "$CLONE" | cut -f1) KiB (only what the guest wrote)"
  rm -f "$WORK/clone.raw"
}

ensure_libvirt
# A domain left by an interrupted run would make define fail.
"${VIRSH[@]}" destroy "$DOMAIN" >/dev/null 2>&1 || true
"${VIRSH[@]}" undefine "$DOMAIN" >/dev/null 2>&1 || true
make_golden_image
provision_disk
convert_domain
boot_vm
check_result
bold "Done in ${SECONDS}s; cleaning up (domain, qemu-storage-daemon, $WORK)."
