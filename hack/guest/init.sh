#!/bin/sh
# /init of the test guest (busybox). Behaviour is chosen on the kernel command line, so tests
# drive it without rebuilding the initramfs:
#   ks.mode=e2e     read the golden marker, write/verify our marker, write a sequence, verify it
#   ks.mode=shell   drop to a busybox shell on the console (debugging)
#   ks.seq=N        number of sequence records; 0 = until a line "stop" arrives on the console
#   ks.tag=TEXT     the guest's own marker text (default: guest)
#   ks.disk=vda     the disk under test
# Every line meant for a test starts with "KS: " so that kernel messages never match.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

# Keep kernel chatter off the console: the tests parse it.
echo 1 >/proc/sys/kernel/printk
exec </dev/console >/dev/console 2>&1
# No echo of what the host types, so "stop" does not show up as guest output.
stty -echo 2>/dev/null

say() { echo "KS: $*"; }
die() {
  say "FAIL $*"
  sync
  poweroff -f
  sleep 60
}

MODE=e2e SEQ=0 TAG=guest DISK=vda
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    ks.mode=*) MODE=${arg#ks.mode=} ;;
    ks.seq=*) SEQ=${arg#ks.seq=} ;;
    ks.tag=*) TAG=${arg#ks.tag=} ;;
    ks.disk=*) DISK=${arg#ks.disk=} ;;
  esac
done
case "$SEQ" in '' | *[!0-9]*) die "ks.seq=$SEQ is not a number" ;; esac
say "BOOT mode=$MODE seq=$SEQ tag=$TAG kernel=$(uname -r)"

KVER=$(uname -r)
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
  f=$(find "/lib/modules/$KVER/kernel/drivers" -name "$m.ko" | head -n 1)
  [ -n "$f" ] || die "module $m not in the initramfs"
  insmod "$f" || die "insmod $m failed"
done

if [ "$MODE" = shell ]; then
  say "SHELL"
  exec setsid cttyhack sh
fi

DEV=/dev/$DISK
i=0
while [ ! -b "$DEV" ]; do
  i=$((i + 1))
  [ $i -le 100 ] || die "$DEV did not appear"
  usleep 100000
done
SECTORS=$(cat "/sys/block/$DISK/size")
say "DISK $DEV sectors=$SECTORS cache=$(cat /sys/block/$DISK/queue/write_cache 2>/dev/null | tr " " -)"

# Layout: sector 0 = golden marker (written by the host), 1 MiB = the guest's marker,
# 2 MiB + 4 KiB * n = sequence record n. O_DIRECT on every access so reads hit the backend,
# not the page cache.
MARKER_OFF=256      # in 4 KiB blocks (1 MiB)
SEQ_BASE=512        # in 4 KiB blocks (2 MiB)
MAX_SEQ=$((SECTORS / 8 - SEQ_BASE))

golden=$(dd if="$DEV" bs=512 count=1 iflag=direct 2>/dev/null | tr -d '\000' | head -n 1)
say "GOLDEN $golden"

printf 'KS-GUEST %s\n' "$TAG" | dd of="$DEV" bs=4096 seek=$MARKER_OFF count=1 conv=sync,fsync oflag=direct 2>/dev/null ||
  die "writing the marker failed"
back=$(dd if="$DEV" bs=4096 skip=$MARKER_OFF count=1 iflag=direct 2>/dev/null | tr -d '\000' | head -n 1)
[ "$back" = "KS-GUEST $TAG" ] || die "marker read back as '$back'"
say "MARKER OK $TAG"

if [ "$SEQ" -gt "$MAX_SEQ" ]; then die "ks.seq=$SEQ does not fit the disk (max $MAX_SEQ)"; fi
limit=$SEQ
[ "$limit" -gt 0 ] || limit=$MAX_SEQ
n=0
while [ $n -lt $limit ]; do
  printf 'KSSEQ %d\n' $n | dd of="$DEV" bs=4096 seek=$((SEQ_BASE + n)) count=1 conv=sync,fsync oflag=direct 2>/dev/null ||
    die "writing record $n failed"
  say "SEQ $n"
  n=$((n + 1))
  # Without a count, run until the host says "stop" on the console; the wait also paces us.
  if [ "$SEQ" -eq 0 ] && read -t 0.05 line && [ "$line" = stop ]; then break; fi
done
say "STOPPED $n"

dd if="$DEV" bs=4096 skip=$SEQ_BASE count=$n iflag=direct 2>/dev/null | tr -d '\000' >/tmp/got
i=0
while [ $i -lt $n ]; do echo "KSSEQ $i"; i=$((i + 1)); done >/tmp/want
if cmp -s /tmp/want /tmp/got; then
  say "VERIFY OK $n"
else
  bad=$(diff /tmp/want /tmp/got | grep '^[-+]K' | head -n 2 | tr '\n' ' ')
  say "VERIFY FAIL $n $bad"
fi
say "POWEROFF"
sync
poweroff -f
