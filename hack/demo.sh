#!/usr/bin/env bash
# make demo: one VM, one SPDK-style disk, on this machine, without Kubernetes.
#
#   golden image -> the agent caches it and makes a thin clone -> vhost-user-blk socket ->
#   domain XML rewritten by the converter -> libvirt boots the VM -> the guest reads the image
#   and writes to its clone -> the storage daemon is killed mid-write and comes back (live
#   recovery) -> the guest verifies every record it wrote.
# Then (DEMO_PEER=0 skips it) a second "node" boots the VM from the first node's golden at once,
# over NBD, while it hydrates; the first node stops serving and the guest verifies its writes.
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
SEQ_RECORDS=30
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
AGENT_PID="" LIBVIRTD_PID="" VIRTLOGD_PID=""

cleanup() {
  set +e
  if "${VIRSH[@]}" dominfo "$DOMAIN" >/dev/null 2>&1; then
    "${VIRSH[@]}" destroy "$DOMAIN" >/dev/null 2>&1
    "${VIRSH[@]}" undefine "$DOMAIN" >/dev/null 2>&1
  fi
  [ -n "${PEER_PID:-}" ] && kill "$PEER_PID" 2>/dev/null && wait "$PEER_PID" 2>/dev/null
  # The agent stops the qemu-storage-daemon it supervises.
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  [ -n "$LIBVIRTD_PID" ] && kill "$LIBVIRTD_PID" 2>/dev/null && wait "$LIBVIRTD_PID" 2>/dev/null
  [ -n "$VIRTLOGD_PID" ] && kill "$VIRTLOGD_PID" 2>/dev/null && wait "$VIRTLOGD_PID" 2>/dev/null
  [ -n "${KEEP_DEMO:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
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

# wait_until PID LOG WHO WHAT CMD...: polls CMD for up to 60 s while process PID (WHO, logging
# to LOG) runs; dies with LOG's tail if PID exits or WHAT is not ready in time.
wait_until() {
  local pid=$1 log=$2 who=$3 what=$4 deadline=$((SECONDS + 60))
  shift 4
  until "$@" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "$who exited: $(tail -5 "$log")"
    [ "$SECONDS" -lt "$deadline" ] || die "$what was not ready in 60 s: $(tail -5 "$log")"
    sleep 0.2
  done
}

# Provisions the VMI's disk the way a node does: the agent reads the VMI (its
# kubevirt-spdk.io/volumes annotation) and the CachedImage catalog, imports the image into its
# cache once, makes a thin clone per disk and serves it as vhost-user-blk at
# <vhost-dir>/<slot>/<disk>, owned by QEMU's uid/gid. Here the backend is qsd
# (qemu-storage-daemon, supervised by the agent); on a node with SPDK it is spdk_tgt.
provision_disk() {
  bold "2. The node agent provisions the disk (qsd backend: no SPDK on this machine)"
  mkdir -p "$WORK/vmis" "$WORK/state" "$WORK/vhost"
  cp "$DEMO/vmi.yaml" "$WORK/vmis/"
  SOCKET="$WORK/vhost/$SLOT/$DISK"
  say "kubevirt-spdk agent --standalone --backend qsd --vmis vmis/ --images images.yaml --vhost-dir vhost/ --state-dir state/"
  (cd "$ROOT" && exec node --import tsx src/cli/main.ts agent --standalone --backend qsd \
    --vmis "$WORK/vmis" --images "$WORK/images.yaml" --vhost-dir "$WORK/vhost" --state-dir "$WORK/state" \
    --socket-owner "$SOCKET_UID:$SOCKET_GID" --socket-mode "$SOCKET_MODE" --resync 2s) >"$WORK/agent.log" 2>&1 &
  AGENT_PID=$!
  wait_until "$AGENT_PID" "$WORK/agent.log" "the agent" "the disk" grep -Eq '"ready": *true' "$WORK/state/slots/$SLOT.json"
  CLONE=$(ls "$WORK"/state/qsd/disks/*.qcow2)
  say "slot    $SLOT ready ($WORK/state/slots/$SLOT.json, what the device plugin waits for)"
  say "clone   $CLONE"
  say "        (qcow2 overlay on the cached golden image: $(du -k "$CLONE" | cut -f1) KiB, no copy)"
  say "socket  $SOCKET ($(stat -c '%u:%g %a' "$SOCKET"))"
  (cd "$ROOT" && npx --no-install tsx src/cli/main.ts status --state-dir "$WORK/state") | sed 's/^/   /'
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
  KILL_AT=$((SEQ_RECORDS / 3))
  while :; do
    mapfile -t lines < <(grep -a '^KS: ' "$CONSOLE" 2>/dev/null | tr -d '\r')
    while [ "$shown" -lt "${#lines[@]}" ]; do
      line=${lines[$shown]#KS: }
      shown=$((shown + 1))
      case "$line" in
        SEQ\ *)
          seqs+="${line#SEQ } "
          if [ "${line#SEQ }" = "$KILL_AT" ]; then
            local qsd
            qsd=$(cat "$WORK/state/qsd/qsd.pid")
            kill -9 "$qsd"
            say "!!     killed qemu-storage-daemon (pid $qsd) while the guest writes: live recovery"
          fi
          ;;
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
  grep -a '"event":"recovery"' "$WORK/agent.log" | head -1 | sed 's/^/   agent: /' || true
  kill "$AGENT_PID" && wait "$AGENT_PID" 2>/dev/null || true
  AGENT_PID=""
  local now cached
  now=$(sha256sum "$GOLDEN" | cut -d' ' -f1)
  [ "$now" = "$GOLDEN_SHA" ] || die "the golden image changed: $now"
  # The node caches a golden by its content key (sha256-<40 hex of its sha256>), not by the CachedImage name.
  cached=$(sha256sum "$WORK/state/qsd/images/sha256-${GOLDEN_SHA:0:40}.raw" | cut -d' ' -f1)
  [ "$cached" = "$GOLDEN_SHA" ] || die "the cached golden image changed: $cached"
  say "golden image sha256 unchanged (source and node cache): $now"
  qemu-img convert -O raw "$CLONE" "$WORK/clone.raw"
  say "clone at 1 MiB: \"$(dd if="$WORK/clone.raw" bs=4096 skip=256 count=1 status=none | tr -d '\0' | head -n 1)\""
  say "clone size on disk: $(du -k "$CLONE" | cut -f1) KiB (only what the guest wrote)"
  rm -f "$WORK/clone.raw"
}

# Part two (DEMO_PEER=0 skips it): a second "node" boots the VM from the first node's golden at once.
# Two qemu-storage-daemons stand for two nodes: A holds the golden and exports it read-only over
# NBD; B chooses A as its source, makes a lazy golden over A's export and serves the VM's disk
# before holding a byte of the image; B hydrates in the background, then A stops serving and
# goes away, and the guest on B verifies everything it wrote.
PEER_PID=""
# Enough records that the guest still writes after node A has gone (one O_DIRECT + fsync each).
PEER_SEQ_RECORDS=400
peer_boot() {
  bold "6. A second node boots the VM from the first node's image (peer over NBD)"
  "${VIRSH[@]}" destroy "$DOMAIN" >/dev/null 2>&1 || true
  "${VIRSH[@]}" undefine "$DOMAIN" >/dev/null 2>&1 || true
  mkdir -p "$WORK/peer"
  (cd "$ROOT" && exec node --import tsx hack/demo/peer.ts "$WORK/peer" "$GOLDEN" "$GOLDEN_SHA" "$SOCKET_UID:$SOCKET_GID" "$SOCKET_MODE") >"$WORK/peer.log" 2>&1 &
  PEER_PID=$!
  wait_until "$PEER_PID" "$WORK/peer.log" "the two-node demo" "node B's disk" grep -q '"event":"b-ready"' "$WORK/peer.log"
  say "node A  $(grep '"a-exported"' "$WORK/peer.log" | sed 's/.*"export":"\([^"]*\)".*/exports its golden read-only over NBD as \1/')"
  say "node B  $(grep '"b-source"' "$WORK/peer.log" | sed 's/.*"source":"\([^"]*\)".*/chooses its source: \1/')"
  say "node B  $(grep '"b-ready"' "$WORK/peer.log" | sed 's/.*"ms":\([0-9]*\).*"hydratedPercent":\([0-9]*\).*/disk ready in \1 ms, with \2% of the image on the node/')"
  CONSOLE="$WORK/console-b.log"
  fill "$DEMO/domain.xml" "KERNEL=$WORK/vmlinuz" "INITRD=$WORK/initramfs.gz" \
    "CMDLINE=console=ttyS0 quiet panic=-1 ks.mode=e2e ks.seq=$PEER_SEQ_RECORDS ks.tag=demo-b-$$" \
    "CONSOLE_LOG=$CONSOLE" >"$WORK/domain-b-in.xml"
  (cd "$ROOT" && npx --no-install tsx src/cli/main.ts convert --vmi "$DEMO/vmi.yaml" \
    --domain "$WORK/domain-b-in.xml" --socket-dir "$WORK/peer/vhost-b/$SLOT") >"$WORK/domain-b.xml"
  "${VIRSH[@]}" define "$WORK/domain-b.xml" >/dev/null
  "${VIRSH[@]}" start "$DOMAIN" >/dev/null
  say "booted  the VM on node B"
  local shown=0 line result="" events=0 deadline=$((SECONDS + 180))
  while :; do
    mapfile -t plines < <(grep '"event":"\(b-hydrating\|b-whole\|a-gone\)"' "$WORK/peer.log" 2>/dev/null)
    while [ "$events" -lt "${#plines[@]}" ]; do
      say "node    ${plines[$events]}"
      events=$((events + 1))
    done
    mapfile -t lines < <(grep -a '^KS: ' "$CONSOLE" 2>/dev/null | tr -d '\r')
    while [ "$shown" -lt "${#lines[@]}" ]; do
      line=${lines[$shown]#KS: }
      shown=$((shown + 1))
      case "$line" in
        GOLDEN\ *) say "guest   read \"${line#GOLDEN }\" (sector 0, from node A's golden through node B)" ;;
        SEQ\ *) [ $(( ${line#SEQ } % 100 )) = 0 ] && say "guest   writing record ${line#SEQ } (O_DIRECT + fsync)" ;;
        VERIFY\ *) result=$line; say "guest   verify ${line#VERIFY }" ;;
        FAIL*) die "the guest on node B failed: $line" ;;
      esac
    done
    [ -n "$result" ] && grep -q '"event":"a-gone"' "$WORK/peer.log" && ! "${VIRSH[@]}" domstate "$DOMAIN" 2>/dev/null | grep -q running && break
    [ "$SECONDS" -lt "$deadline" ] || die "the two-node demo did not finish in 180 s; console: $(tail -3 "$CONSOLE"); $(tail -3 "$WORK/peer.log")"
    sleep 0.5
  done
  case "$result" in "VERIFY OK "*) ;; *) die "the guest on node B could not verify its writes: $result" ;; esac
  kill "$PEER_PID" && wait "$PEER_PID" 2>/dev/null || true
  PEER_PID=""
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
[ "${DEMO_PEER:-1}" = 0 ] || peer_boot
bold "Done in ${SECONDS}s; cleaning up (domain, agent and its qemu-storage-daemon, $WORK)."
