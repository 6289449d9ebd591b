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

. "$(dirname "$0")/lib.sh"

id=$(testdata/app-overlay.sh "$cloudlet" "$guest" "$home" "$work" | tail -n1)
echo "base ID: $id"
"$cloudlet" overlay info "$work/app.overlay"

echo
echo "== origins serving the overlays over an emulated 38 Mbit/s link with 20 ms RTT"
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
	echo "== cloudlet synthesis: $name"
	port=$(free_port)
	# --chunk-cache-size 0: the three runs share chunks, and each must fetch them to compare.
	"$cloudlet" synthesis "$id" "$url" "$@" --chunk-cache-size 0 --hostfwd "tcp:127.0.0.1:$port-:8080" \
		--probe "http://127.0.0.1:$port/" --exit-when-complete 2>/dev/null | tee "$work/$name.txt"
}
synth profiled "$profiled"
synth unprofiled "$plain"
synth no-early-start "$plain" --no-early-start
echo
echo "TTFR, early start with the profiled working set: $(ttfr "$work/profiled.txt")s"
echo "TTFR, early start without profiling:             $(ttfr "$work/unprofiled.txt")s"
echo "TTFR, download everything first (Elijah):        $(ttfr "$work/no-early-start.txt")s"
