#!/usr/bin/env bash
# Builds the realistic benchmark guest: a Debian bookworm root disk (debootstrap minbase with
# python3 and numpy) that boots with the test guest's kernel and initramfs into a small shell
# script init: networking, an HTTP server on port 80 and a root shell on the serial port, like
# the test guest, but with a real distribution's size and a real language runtime to load.
# Output: OUT/vmlinuz, OUT/initrd.img (copies of the test guest's), OUT/rootfs.img (raw ext4,
# 1.5 GiB, sparse). The root disk is cached and rebuilt only when a file of this recipe changes.
# debootstrap needs root.
#
# usage: build.sh OUT   (MIRROR overrides the Debian mirror)
set -euo pipefail

recipe=$(cd "$(dirname "$0")" && pwd)
repo=$recipe/../..
out=${1:?usage: build.sh OUT}
mirror=${MIRROR:-http://deb.debian.org/debian}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Concurrent runs may ask for the guest at once: one builds, the others wait.
exec 9>"$out/.lock"
flock 9

# The kernel and initramfs are the test guest's (its /init mounts /dev/vda and runs /sbin/init):
# build it if needed, and refresh our copies whenever it was rebuilt.
"$repo/testdata/guest/build.sh" "$repo/build/guest" >&2
for f in vmlinuz initrd.img; do
	cmp -s "$repo/build/guest/$f" "$out/$f" || cp "$repo/build/guest/$f" "$out/$f"
done

# Only build.sh and init shape the root disk (app-overlay.sh and app.py do not).
hash=$( (cd "$recipe" && sha256sum build.sh init) | sha256sum | cut -d' ' -f1)
if [[ -f $out/recipe.sha256 && $(cat "$out/recipe.sha256") == "$hash" && -f $out/rootfs.img ]]; then
	echo "realistic: up to date in $out"
	exit 0
fi

for tool in debootstrap mke2fs; do
	command -v "$tool" >/dev/null || { echo "realistic: $tool not found (apt-get install $tool)" >&2; exit 1; }
done

work=$(mktemp -d "$out/.work.XXXXXX")
# debootstrap mounts proc and sys in the target while it installs: if it dies, unmount them
# before removing the tree, and never let rm cross into a mount.
cleanup() {
	awk -v w="$work/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# minbase is apt and the Essential packages; busybox gives ip and httpd in one small binary.
echo "realistic: debootstrap bookworm from $mirror (a minute or more)"
mkdir -m 755 "$work/root"
debootstrap --variant=minbase --include=python3,python3-numpy,busybox \
	bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
	{ tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

root=$work/root
install -m 755 "$recipe/init" "$root/usr/sbin/init"   # /sbin is a link to usr/sbin
mkdir -p "$root/srv/www"
echo '<html><body><h1>cloudlet realistic guest</h1></body></html>' >"$root/srv/www/index.html"
echo cloudlet-realistic >"$root/etc/hostname"
# The downloaded packages and apt lists are no part of a running system.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

mke2fs -q -t ext4 -L cloudlet-root -d "$root" "$work/rootfs.img" 1536M >/dev/null
mv "$work/rootfs.img" "$out/"
echo "$hash" >"$out/recipe.sha256"
echo "realistic: built in $out ($(du -sh "$out/rootfs.img" | cut -f1) used of 1.5G)"
