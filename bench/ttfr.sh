#!/usr/bin/env bash
# The TTFR benchmark on the test guest: base, app overlay and its profiled twin, then every
# mode at several link speeds, interleaved. Writes bench/ttfr-test.md, .json and .svg.
# usage: bench/ttfr.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
make -s build guest >/dev/null
id=$(testdata/app-overlay.sh build/cloudlet build/guest "$work/home" "$work" | tail -n1)
go run ./bench/ttfr -cloudlet build/cloudlet -home "$work/home" -base "$id" \
	-overlay "$work/app.overlay" -profiled "$work/app.profiled.overlay" -port 8080 \
	-title "The test guest (busybox, 256 MiB RAM, 64 MiB disk); the overlay adds an HTTP app and 24 MiB of app state in RAM." \
	-links 10Mbit,38Mbit,100Mbit,1000Mbit -rtt 20ms -runs "$runs" -out bench/ttfr-test
