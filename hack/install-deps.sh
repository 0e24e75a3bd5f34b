#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use, only those that are missing.
# Idempotent: a second run installs nothing.
set -euo pipefail

# command -> package that provides it
declare -A NEED=(
  [qemu-storage-daemon]=qemu-system-common
  [qemu-system-x86_64]=qemu-system-x86
  [qemu-img]=qemu-utils
  [libvirtd]=libvirt-daemon-system
  [virsh]=libvirt-clients
  [virt-xml-validate]=libvirt-clients
  [xmllint]=libxml2-utils
  [busybox]=busybox-static
  [cpio]=cpio
)
# Packages that provide no command we can probe for. qemu-block-extra: the curl block driver
# (block-curl.so) with which qemu-storage-daemon reads a lazy image from its http(s) origin.
EXTRA_PKGS=(libvirt-daemon-driver-qemu qemu-block-extra)

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
for pkg in "${EXTRA_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Without udev (containers, CI VMs) /dev/kvm stays root-only. libvirt then finds at every
# lookup that KVM "was enabled when probing but is not available now" for its QEMU user and
# re-probes QEMU's capabilities again and again (seconds each, a define can take a minute).
# Give it the owner and mode udev gives it on a normal Debian machine.
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
  echo "install-deps: /dev/kvm -> root:kvm 0660 (as udev would set it)"
  $SUDO chgrp kvm /dev/kvm && $SUDO chmod 0660 /dev/kvm
fi

# The test guest (a Debian kernel and its virtio modules, a busybox initramfs).
guest="$(dirname "$0")/guest/build-guest.sh"
if [ -f "$guest" ]; then bash "$guest"; fi
