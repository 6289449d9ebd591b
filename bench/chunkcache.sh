#!/usr/bin/env bash
# What the shared chunk cache saves a next version of an app: a base of the test guest, then
# RUNS times (default 1) two overlays of it, v1 (an app) and v2 (the same app plus 4,000,000
# random bytes), both profiled too, and bench/chunkcache on the unprofiled and on the profiled
# pair. Prints one markdown table, a row per pair. Everything lives in a temporary home that
# is removed at the end; the cloudlet commands stop their guests themselves.
# usage: bench/chunkcache.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
	echo "usage: bench/chunkcache.sh [RUNS]  (RUNS a positive number, got $runs)" >&2
	exit 2
fi
. testdata/lib.sh

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
make -s build guest >/dev/null
go build -o "$work/chunkcache" ./bench/chunkcache
cloudlet() { build/cloudlet --home "$work/home" "$@"; }

echo "== cloudlet base create: the test guest, 128M of memory" >&2
port=$(free_port)
id=$(cloudlet base create --disk build/guest/rootfs.img --kernel build/guest/vmlinuz --initrd build/guest/initrd.img \
	--memory 128M --ready "http://127.0.0.1:$port/" --hostfwd "tcp:127.0.0.1:$port-:80" | tail -n1)

# The app: three archives of the guest's files (they compress to about 1.7 MB) and a page.
app='mkdir -p /www2 && echo custom-app > /www2/index.html && for l in 1 5 9; do tar c /lib /bin /sbin /usr 2>/dev/null | gzip -$l > /www2/app$l.tgz; done; sync'
model='head -c 4000000 /dev/urandom > /www2/model.bin && sync'
# capture OUT EXEC...: an overlay of the base after the EXECs, with the app's server started.
capture() {
	local out=$1 p
	shift
	local execs=()
	for e in "$@"; do execs+=(--exec "$e"); done
	p=$(free_port)
	cloudlet overlay create "$id" "${execs[@]}" --exec 'httpd -p 8080 -h /www2' \
		--hostfwd "tcp:127.0.0.1:$p-:8080" --ready "http://127.0.0.1:$p/" -o "$out" >/dev/null
	p=$(free_port)
	cloudlet overlay profile "$out" --base "$id" --probe "http://127.0.0.1:$p/" \
		--hostfwd "tcp:127.0.0.1:$p-:8080" -o "${out%.overlay}.profiled.overlay" >/dev/null
}

"$work/chunkcache" -header
for ((run = 1; run <= runs; run++)); do
	echo "== run $run of $runs: overlay create and overlay profile of v1 and v2" >&2
	capture "$work/v1.overlay" "$app"
	capture "$work/v2.overlay" "$app" "$model"
	for kind in unprofiled profiled; do
		suffix=.overlay
		[[ $kind == profiled ]] && suffix=.profiled.overlay
		"$work/chunkcache" -home "$work/home" -base "$id" -v1 "$work/v1$suffix" -v2 "$work/v2$suffix" -row "$run, $kind"
	done
	rm -f "$work"/v[12]*.overlay
done
echo
echo "v2 = v1 + a file of 4,000,000 random bytes; base: the test guest with 128M of memory. Blobs"
echo "fetched: bytes read from the overlay beyond its header, index, device state and digest table,"
echo "which every fetch reads and no cache can spare. \"With v1 cached\" had v1's chunks in the chunk"
echo "cache; \"a second time\" had v2's own. The ratio is what v2 fetched with v1 cached over the"
echo "change."
