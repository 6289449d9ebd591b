#!/usr/bin/env bash
# Builds the test guest from Debian packages: the Debian kernel, a busybox initramfs that loads
# the virtio and ext4 modules, and an ext4 root disk with networking, a serial shell and an HTTP
# app. Output: OUT/vmlinuz, OUT/initrd.img, OUT/rootfs.img (raw). The result is cached and
# rebuilt only when a file of this recipe changes.
#
# usage: build.sh [OUT]   (default: build/guest under the repository root)
set -euo pipefail

recipe=$(cd "$(dirname "$0")" && pwd)
out=${1:-$recipe/../../build/guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Concurrent test packages may ask for the guest at once: one builds, the others wait.
exec 9>"$out/.lock"
flock 9

# The modules the guest needs; their dependencies are resolved from modules.dep.
modules=(virtio_pci virtio_net virtio_blk ext4)
disk_size=64M

hash=$( (cd "$recipe" && find . -type f ! -name '*~' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1)
if [[ -f $out/recipe.sha256 && $(cat "$out/recipe.sha256") == "$hash" &&
	-f $out/vmlinuz && -f $out/initrd.img && -f $out/rootfs.img ]]; then
	echo "guest: up to date in $out"
	exit 0
fi

for tool in apt-get apt-cache dpkg-deb modprobe depmod cpio gzip mke2fs; do
	command -v "$tool" >/dev/null || { echo "guest: $tool not found; run 'make deps'" >&2; exit 1; }
done

work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

# The kernel that Debian's linux-image-amd64 currently points at.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [[ -z $kpkg ]]; then
	echo "guest: cannot resolve linux-image-amd64; run 'apt-get update' (or 'make deps')" >&2
	exit 1
fi
kver=${kpkg#linux-image-}
echo "guest: kernel $kver"
apt-get download "$kpkg" busybox-static >/dev/null 2>download.log || { cat download.log >&2; exit 1; }
dpkg-deb -x linux-image-*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
depmod -b kernel "$kver"

# initramfs: busybox, the modules in load order, /init.
mkdir -p initrd/{bin,dev,lib/modules}
cp busybox/bin/busybox initrd/bin/busybox
: >initrd/modules.order
for m in "${modules[@]}"; do
	modprobe -d kernel -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
	cp "$ko" initrd/lib/modules/
	basename "$ko" >>initrd/modules.order
done
cp "$recipe/init" initrd/init
chmod 755 initrd/init
# No device nodes are needed in the archive (so no mknod, no root): /init mounts devtmpfs and
# re-opens /dev/console itself.
(cd initrd && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >initrd.cpio
gzip -9 -n <initrd.cpio >initrd.img

# root disk: busybox with its applet links, the init scripts, the HTTP app and a data file.
mkdir -p root/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,data}
cp busybox/bin/busybox root/bin/busybox
for applet in $(root/bin/busybox --list-full); do
	[[ -e root/$applet ]] || ln -s /bin/busybox "root/$applet"
done
cp -a "$recipe/rootfs/." root/
head -c 4M /dev/urandom >root/data/blob
# 4 KiB blocks, as on real guests: mke2fs gives a disk this small 1 KiB blocks, and then a
# file's 4 KiB pages in the guest's page cache never line up with the disk's 4 KiB chunks, so
# an overlay stores a new file twice (on disk and in memory) instead of once. The "small"
# profile's one inode per 4 KiB still applies, far more than the applet links need.
mke2fs -q -t ext4 -b 4096 -L cloudlet-root -d root rootfs.img "$disk_size"

cp kernel/boot/vmlinuz-"$kver" vmlinuz
mv vmlinuz initrd.img rootfs.img "$out/"
echo "$kver" >"$out/kernel-version"
echo "$hash" >"$out/recipe.sha256"
echo "guest: built in $out"
