#!/usr/bin/env bash
# The TTFR benchmark on the realistic guest: a Debian root disk with a Python web app that
# loads numpy and a model file at start (bench/realistic/), built on demand and cached in
# build/realistic. Writes bench/ttfr-realistic.md, .json and .svg. usage: bench/realistic.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
make -s build guest >/dev/null
bench/realistic/build.sh build/realistic >&2
id=$(bench/realistic/app-overlay.sh build/cloudlet build/realistic "$work/home" "$work" | tail -n1)
go run ./bench/ttfr -cloudlet build/cloudlet -home "$work/home" -base "$id" \
	-overlay "$work/app.overlay" -profiled "$work/app.profiled.overlay" -port 8080 \
	-title "The realistic guest (Debian 12, 512 MiB RAM, 1.5 GiB disk); the overlay installs a Python web app that loads numpy and a model file at start." \
	-links 10Mbit,38Mbit,100Mbit,1000Mbit -rtt 20ms -runs "$runs" -out bench/ttfr-realistic
