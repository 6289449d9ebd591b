#!/usr/bin/env bash
# The demo: guest → base → overlay (an app added with --exec) → synthesis from a local HTTP
# origin behind an emulated 38 Mbit/s, 20 ms link, with early start and without.
# usage: demo.sh CLOUDLET GUESTDIR HOME
set -euo pipefail
cloudlet=$1 guest=$2 home=$3
export CLOUDLET_HOME=$home
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

port=$(free_port)
echo "== 1. cloudlet base create: boot the test guest, wait for its HTTP server, snapshot it"
id=$("$cloudlet" base create --disk "$guest/rootfs.img" --kernel "$guest/vmlinuz" --initrd "$guest/initrd.img" \
	--memory 256M --name demo --ready "http://127.0.0.1:$port/" --hostfwd "tcp:127.0.0.1:$port-:80" | tail -n1)
echo "base ID: $id"

echo
echo "== 2. cloudlet overlay create: add an app (HTTP on port 8080) and 24 MiB of app state in RAM"
p80=$(free_port) p8080=$(free_port)
"$cloudlet" overlay create "$id" \
	--exec 'mkdir -p /www2 && echo "hello from the custom app" > /www2/index.html' \
	--exec 'dd if=/dev/urandom of=/dev/shm/app-state bs=1M count=24 2>/dev/null' \
	--exec 'httpd -p 8080 -h /www2' \
	--hostfwd "tcp:127.0.0.1:$p80-:80" --hostfwd "tcp:127.0.0.1:$p8080-:8080" --ready "http://127.0.0.1:$p8080/" \
	-o "$work/app.overlay" >/dev/null
"$cloudlet" overlay info "$work/app.overlay"

echo
echo "== 3. cloudlet overlay profile: record what the app touches until it answers, fetch that first"
port=$(free_port)
"$cloudlet" overlay profile "$work/app.overlay" --base "$id" -o "$work/app.profiled.overlay" \
	--hostfwd "tcp:127.0.0.1:$port-:8080" --probe "http://127.0.0.1:$port/" >/dev/null

echo
echo "== 4. origins serving the overlays over an emulated 38 Mbit/s link with 20 ms RTT"
go build -o "$work/origin" ./bench/origin
serve() {
	"$work/origin" -file "$1" -rtt 20ms -bandwidth 38Mbit >"$1.url" 2>/dev/null &
	pids+=($!)
	for _ in $(seq 1 50); do [[ -s $1.url ]] && break; sleep 0.1; done
	head -n1 "$1.url"
}
plain=$(serve "$work/app.overlay")
profiled=$(serve "$work/app.profiled.overlay")

ttfr() { sed -n 's/^ *\([0-9.]*\)s  first_answer.*/\1/p' "$1"; }
synth() { # name url flags...
	local name=$1 url=$2
	shift 2
	echo
	echo "== 5. cloudlet synthesis: $name"
	port=$(free_port)
	"$cloudlet" synthesis "$id" "$url" "$@" --hostfwd "tcp:127.0.0.1:$port-:8080" \
		--probe "http://127.0.0.1:$port/" --exit-when-complete 2>/dev/null | tee "$work/$name.txt"
}
synth profiled "$profiled"
synth unprofiled "$plain"
synth no-early-start "$plain" --no-early-start
echo
echo "TTFR, early start with the profiled working set: $(ttfr "$work/profiled.txt")s"
echo "TTFR, early start without profiling:             $(ttfr "$work/unprofiled.txt")s"
echo "TTFR, download everything first (Elijah):        $(ttfr "$work/no-early-start.txt")s"
