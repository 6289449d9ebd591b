#!/usr/bin/env bash
# Makes a base of the test guest and an app overlay for it, plus the overlay after working-set
# profiling: the shared set-up of the demo and the TTFR benchmark.
# usage: app-overlay.sh CLOUDLET GUESTDIR HOME OUTDIR   (prints the base ID on its last line)
set -euo pipefail
cloudlet=$1 guest=$2 home=$3 out=$4
export CLOUDLET_HOME=$home
mkdir -p "$out"
. "$(dirname "$0")/lib.sh"

port=$(free_port)
echo "== cloudlet base create: boot the test guest, wait for its HTTP server, snapshot it" >&2
id=$("$cloudlet" base create --disk "$guest/rootfs.img" --kernel "$guest/vmlinuz" --initrd "$guest/initrd.img" \
	--memory 256M --name demo --ready "http://127.0.0.1:$port/" --hostfwd "tcp:127.0.0.1:$port-:80" | tail -n1)

echo "== cloudlet overlay create: add an app (HTTP on port 8080) and 24 MiB of app state in RAM" >&2
p80=$(free_port) p8080=$(free_port)
"$cloudlet" overlay create "$id" \
	--exec 'mkdir -p /www2 && echo "hello from the custom app" > /www2/index.html' \
	--exec 'dd if=/dev/urandom of=/dev/shm/app-state bs=1M count=24 2>/dev/null' \
	--exec 'httpd -p 8080 -h /www2' \
	--hostfwd "tcp:127.0.0.1:$p80-:80" --hostfwd "tcp:127.0.0.1:$p8080-:8080" --ready "http://127.0.0.1:$p8080/" \
	-o "$out/app.overlay" >/dev/null

echo "== cloudlet overlay profile: record what the app touches until it answers, fetch that first" >&2
port=$(free_port)
"$cloudlet" overlay profile "$out/app.overlay" --base "$id" -o "$out/app.profiled.overlay" \
	--hostfwd "tcp:127.0.0.1:$port-:8080" --probe "http://127.0.0.1:$port/" >/dev/null
echo "$id"
