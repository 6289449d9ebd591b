#!/usr/bin/env bash
# The TTFR benchmark on one guest: its base, app overlay and profiled twin, then every mode at
# several link speeds, interleaved. Writes bench/ttfr-GUEST.md, .json and .svg.
# usage: bench/ttfr.sh test|realistic [RUNS]
#   test       the test guest (testdata/guest)
#   realistic  a Debian root disk with a Python web app that loads numpy and a model file at
#              start (bench/realistic/), built on demand and cached in build/realistic
set -euo pipefail
cd "$(dirname "$0")/.."
guest=${1:?usage: bench/ttfr.sh test|realistic [RUNS]} runs=${2:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
make -s build guest >/dev/null
case $guest in
test)
	id=$(testdata/app-overlay.sh build/cloudlet build/guest "$work/home" "$work" | tail -n1)
	title="The test guest (busybox, 256 MiB RAM, 64 MiB disk); the overlay adds an HTTP app and 24 MiB of app state in RAM."
	;;
realistic)
	bench/realistic/build.sh build/realistic >&2
	id=$(bench/realistic/app-overlay.sh build/cloudlet build/realistic "$work/home" "$work" | tail -n1)
	title="The realistic guest (Debian 12, 512 MiB RAM, 1.5 GiB disk); the overlay installs a Python web app that loads numpy and a model file at start."
	;;
*)
	echo "bench/ttfr.sh: unknown guest $guest (want test or realistic)" >&2
	exit 2
	;;
esac
go run ./bench/ttfr -cloudlet build/cloudlet -home "$work/home" -base "$id" \
	-overlay "$work/app.overlay" -profiled "$work/app.profiled.overlay" -port 8080 -title "$title" \
	-links 10Mbit,38Mbit,100Mbit,1000Mbit -rtt 20ms -runs "$runs" -out "bench/ttfr-$guest"
