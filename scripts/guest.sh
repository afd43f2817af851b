#!/usr/bin/env bash
# Builds the real VM of tests/real_vm.rs from Debian packages: Debian's kernel (linux-image-amd64)
# and a busybox-static initramfs holding the virtio network and block modules and an init that
# gives the guest its /32 and the seed's arbitrary gateway (the kernel answers ICMP). A guest
# given a disk (virtio, /dev/vda) also answers TCP port 5000 with the disk's SHA-256, read from
# the disk itself (the page cache dropped first), so a test can check a disk that was copied.
# Cached and idempotent: a second run with the same packages only prints the directory.
#
#   scripts/guest.sh            builds if needed; prints the directory holding vmlinuz and initrd
#
# The directory is this script's own: $VMTUN_GUEST_DIR, or ~/.cache/vmtun-guest. Progress goes to
# stderr, the directory alone to stdout.
set -euo pipefail

DIR=${VMTUN_GUEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmtun-guest}
# The virtio NIC's and disk's modules in load order (on 6.1 virtio_pci is a module too); a name
# missing from the package is built into the kernel and skipped.
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_blk)
# Bump when the init or the module list changes, so that caches rebuild.
RECIPE=4

say() { echo "guest: $*" >&2; }

mkdir -p "$DIR/debs"
cd "$DIR/debs"
# One build at a time (tests run in parallel); the others then find it cached.
exec 9>"$DIR/lock"
flock 9

# The kernel package's name follows from the metapackage's dependency.
kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$kernel_pkg" ]; then
  say "apt knows no linux-image-amd64; run apt-get update (or scripts/setup.sh), then rerun"
  exit 1
fi
stamp="$kernel_pkg $(apt-cache policy busybox-static | awk '/Candidate:/ { print $2 }') recipe $RECIPE"
if [ -f "$DIR/vmlinuz" ] && [ -f "$DIR/initrd" ] && [ "$(cat "$DIR/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$DIR"
  exit 0
fi

# Packages of an older build go: the ones below are the candidates the stamp names.
rm -f ./*.deb
for pkg in "$kernel_pkg" busybox-static; do
  say "downloading $pkg"
  # apt's sandbox user cannot write a root-owned cache; the download is checked all the same.
  apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true
  ls "${pkg}"_*.deb >/dev/null 2>&1 || { say "could not download $pkg"; exit 1; }
done

work=$(mktemp -d "$DIR/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "unpacking $kernel_pkg and busybox-static"
dpkg-deb -x "$(ls "${kernel_pkg}"_*.deb | head -n1)" "$work/kernel"
dpkg-deb -x "$(ls busybox-static_*.deb | head -n1)" "$work/busybox"

root="$work/root"
mkdir -p "$root"/{bin,proc,sys,dev,modules}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for applet in sh mount insmod ip sleep cat echo nc sha256sum; do
  ln -s busybox "$root/bin/$applet"
done

moddir=$(echo "$work"/kernel/lib/modules/*)
loaded=()
for m in "${MODULES[@]}"; do
  ko=$(find "$moddir" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n1)
  if [ -z "$ko" ]; then
    grep -q "/$m.ko\$" "$moddir/modules.builtin" 2>/dev/null || { say "module $m neither in the package nor built in"; exit 1; }
    continue
  fi
  case "$ko" in
    *.xz) xz -dc "$ko" >"$root/modules/$m.ko" ;;
    *.zst) zstd -qdc "$ko" >"$root/modules/$m.ko" ;;
    *) cp "$ko" "$root/modules/$m.ko" ;;
  esac
  loaded+=("$m")
done

# What port 5000 runs for each connection: the disk's checksum, read from the disk.
cat >"$root/bin/disksum" <<'EOF'
#!/bin/sh
echo 3 >/proc/sys/vm/drop_caches
sha256sum /dev/vda
EOF
chmod +x "$root/bin/disksum"

# The init: the VM's address and gateway come from the kernel command line
# (vmtun.addr=, vmtun.gw=); "vmtun-guest: up" on the console says the network is configured,
# "vmtun-guest: failed" that it could not be; "vmtun-guest: disk" that a disk is served.
cat >"$root/init" <<EOF
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in ${loaded[*]}; do insmod /modules/\$m.ko; done
addr=203.0.113.2; gw=192.0.2.1
for arg in \$(cat /proc/cmdline); do
  case "\$arg" in
    vmtun.addr=*) addr=\${arg#vmtun.addr=} ;;
    vmtun.gw=*) gw=\${arg#vmtun.gw=} ;;
  esac
done
ip link set lo up
if ip link set eth0 up && ip addr add \$addr/32 dev eth0 && ip route add \$gw dev eth0 &&
  ip route add default via \$gw dev eth0; then
  echo "vmtun-guest: up \$addr via \$gw"
else
  echo "vmtun-guest: failed: eth0 could not be configured (did a virtio module not load?)"
fi
if [ -b /dev/vda ]; then
  nc -ll -p 5000 -e /bin/disksum &
  echo "vmtun-guest: disk /dev/vda, its SHA-256 on TCP port 5000"
fi
while :; do sleep 3600; done
EOF
chmod +x "$root/init"

say "packing the initramfs"
(cd "$root" && find . | "$root/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -9) >"$work/initrd"
cp "$work"/kernel/boot/vmlinuz-* "$work/vmlinuz"
mv "$work/vmlinuz" "$DIR/vmlinuz"
mv "$work/initrd" "$DIR/initrd"
echo "$stamp" >"$DIR/stamp"
say "built $(du -h "$DIR/initrd" | cut -f1) initramfs with ${loaded[*]} for $kernel_pkg in $DIR"
echo "$DIR"
