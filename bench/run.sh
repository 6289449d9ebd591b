#!/usr/bin/env bash
# 'make bench': every benchmark, then bench/RESULTS.md from what they printed, with the exact
# commands and the machine. Raw outputs stay in bench/out/. usage: bench/run.sh [RUNS]
# (RUNS per TTFR mode and link; default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
out=bench/out
mkdir -p "$out"

# step NAME TITLE COMMAND...: runs the command, keeps its output, and notes it for the report.
steps=()
step() {
	local name=$1 title=$2
	shift 2
	echo "== $title: $*" >&2
	"$@" | tee "$out/$name.txt"
	printf '%s\n' "$*" >"$out/$name.cmd"
	steps+=("$name|$title")
}

step ttfr-test "Time to first response: the test guest" bench/ttfr.sh test "$runs"
step ttfr-realistic "Time to first response: the realistic guest" bench/ttfr.sh realistic "$runs"
step sequential "cloudletfs: sequential first-touch throughput" \
	go test ./bench -run '^$' -bench Sequential -benchtime 20x -count 3
step random "cloudletfs: random 4 KiB first-touch latency and demand misses" \
	go test ./bench -run '^$' -bench 'Random|Demand' -benchtime 4000x -count 3
step dirty "cloudletfs: dirtying memory through a shared mapping (capture)" \
	go test ./bench -run '^$' -bench SharedMmapDirty -benchtime 3x -count 2
step overlay "Overlays: size against qcow2+xz, codecs, build throughput" \
	go test ./bench -run '^$' -bench Overlay -benchtime 1x

{
	echo "# Benchmark results"
	echo
	echo "Written by \`make bench\` (bench/run.sh) on $(date -u +%Y-%m-%d). Each section gives the"
	echo "command that produced it; raw outputs are in bench/out/. Analysis of these numbers, and"
	echo "of earlier runs: bench/NOTES.md."
	echo
	echo "Machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -n1)),"
	echo "$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r),"
	accel=TCG
	if [[ -e /sys/module/kvm_intel || -e /sys/module/kvm_amd ]]; then accel=KVM; fi
	echo "$(qemu-system-x86_64 --version | head -n1), guests under $accel."
	for s in "${steps[@]}"; do
		name=${s%%|*} title=${s#*|}
		echo
		echo "## $title"
		echo
		echo '```'
		cat "$out/$name.cmd"
		echo '```'
		echo
		case $name in
		ttfr-*)
			cat "bench/$name.md"
			echo
			echo "![TTFR by mode and link speed]($name.svg)"
			;;
		*)
			echo '```'
			grep -E '^(Benchmark|goos|cpu)' "$out/$name.txt" || cat "$out/$name.txt"
			echo '```'
			;;
		esac
	done
} >bench/RESULTS.md
echo "wrote bench/RESULTS.md" >&2
