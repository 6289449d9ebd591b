#!/usr/bin/env bash
# The TTFR benchmark on one guest: its base, app overlay and profiled twin, then every mode at
# several link settings, interleaved.
# usage: bench/ttfr.sh test|realistic|weights [RUNS] [PART...] [-- HARNESS-FLAG...]
#   test       the test guest (testdata/guest) with a small app beside 24 MiB of unread state
#   realistic  a Debian root disk with a Python web app that loads numpy and a model file at
#              start (bench/realistic/), built on demand and cached in build/realistic
#   weights    the test guest with a model server that reads its 32 MiB of weights, over 90 %
#              of the overlay, before it answers: where lazy loading can only lose
# PARTs (default: links rtt), each a run of the harness with its own report:
#   links  every mode at 10, 38, 100 and 1000 Mbit/s, RTT 20 ms: bench/ttfr-GUEST.md, .json, .svg
#   rtt    the RTT sweep, 0, 20, 50 and 100 ms at 38 Mbit/s: bench/ttfr-GUEST-rtt.*
#   slow   1 Mbit/s, profiled and download-first (long: minutes per run): bench/ttfr-GUEST-1mbit.*
# HARNESS-FLAGs go to every harness run after these settings, and win: for a short check,
#   bench/ttfr.sh test 1 links -- -links 38Mbit -out /tmp/ttfr-check
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bench/ttfr.sh test|realistic|weights [RUNS] [links] [rtt] [slow] [-- HARNESS-FLAG...]"
guest=${1:?$usage}
shift
runs=3
if [[ ${1:-} =~ ^[0-9]+$ ]]; then
	runs=$1
	shift
fi
parts=() extra=()
while (($#)); do
	case $1 in
	--)
		shift
		extra=("$@")
		break
		;;
	links | rtt | slow) parts+=("$1") ;;
	*)
		echo "bench/ttfr.sh: unknown part $1; $usage" >&2
		exit 2
		;;
	esac
	shift
done
((${#parts[@]})) || parts=(links rtt)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
make -s build guest >/dev/null
path=/
case $guest in
test)
	id=$(testdata/app-overlay.sh build/cloudlet build/guest "$work/home" "$work" | tail -n1)
	title="The test guest (busybox, 256 MiB RAM, 64 MiB disk); the overlay adds an HTTP app and 24 MiB of app state in RAM."
	;;
weights)
	id=$(testdata/app-overlay.sh build/cloudlet build/guest "$work/home" "$work" weights | tail -n1)
	path=/cgi-bin/weights
	title="The test guest (busybox, 256 MiB RAM, 64 MiB disk); the overlay adds a model server whose first answer reads its 32 MiB of weights (random bytes in RAM) whole."
	;;
realistic)
	bench/realistic/build.sh build/realistic >&2
	id=$(bench/realistic/app-overlay.sh build/cloudlet build/realistic "$work/home" "$work" | tail -n1)
	title="The realistic guest (Debian 12, 512 MiB RAM, 1.5 GiB disk); the overlay installs a Python web app that loads numpy and a model file at start."
	;;
*)
	echo "bench/ttfr.sh: unknown guest $guest (want test, realistic or weights)" >&2
	exit 2
	;;
esac
go build -o "$work/ttfr" ./bench/ttfr
harness() {
	"$work/ttfr" -cloudlet build/cloudlet -home "$work/home" -base "$id" -overlay "$work/app.overlay" \
		-profiled "$work/app.profiled.overlay" -port 8080 -path "$path" -title "$title" -runs "$runs" "$@" "${extra[@]}"
}
for part in "${parts[@]}"; do
	case $part in
	links)
		harness -links 10Mbit,38Mbit,100Mbit,1000Mbit -rtt 20ms -modes profiled,unprofiled,download-first,peer,local \
			-out "bench/ttfr-$guest"
		;;
	rtt)
		harness -links 38Mbit -rtt 0,20ms,50ms,100ms -modes profiled,download-first,local -out "bench/ttfr-$guest-rtt"
		;;
	slow)
		harness -links 1Mbit -rtt 20ms -modes profiled,download-first,local -out "bench/ttfr-$guest-1mbit"
		;;
	esac
done
