#!/usr/bin/env bash
# 'make bench': every benchmark, then bench/RESULTS.md from what they printed, with the exact
# commands and the machine. Raw outputs stay in bench/out/.
# usage: bench/run.sh [RUNS] [STEP...]   RUNS per TTFR mode and link, and pairs of overlays
# captured by chunkcache (default 3); STEPs limit the run to some of: ttfr-test ttfr-realistic
# ttfr-weights ttfr-realistic-1mbit sequential random dirty overlay decode chunkcache; 'report'
# runs none and only rewrites RESULTS.md. The report covers every step that has an output.
# ttfr-realistic-1mbit is one run whatever RUNS says: it takes over ten minutes. ttfr-test takes
# 5 runs for 3: its guest answers in about 0.4 s, and one run spreads by as much as the goal's
# margin (0.35-0.78 s), so a median of 3 misses the goal by chance now and then.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shift || true
only=" $* "
out=bench/out
mkdir -p "$out"

# name|title|command, in report order.
steps=(
	"ttfr-test|Time to first response: the test guest|bench/ttfr.sh test $((runs * 5 / 3))"
	"ttfr-realistic|Time to first response: the realistic guest|bench/ttfr.sh realistic $runs"
	"ttfr-weights|Time to first response: a model server that reads over 90 % of its overlay first|bench/ttfr.sh weights $runs"
	"ttfr-realistic-1mbit|Time to first response: the realistic guest at 1 Mbit/s|bench/ttfr.sh realistic 1 slow"
	"sequential|cloudletfs: sequential first-touch throughput|go test ./bench -run ^\$ -bench Sequential -benchtime 20x -count 3"
	"random|cloudletfs: random 4 KiB first-touch latency and demand misses|go test ./bench -run ^\$ -bench Random|Demand -benchtime 4000x -count 3"
	"dirty|cloudletfs: dirtying memory through a shared mapping (capture)|go test ./bench -run ^\$ -bench SharedMmapDirty -benchtime 3x -count 2"
	"overlay|Overlays: size against qcow2+xz, codecs, build throughput|go test ./bench -run ^\$ -bench Overlay -benchtime 1x"
	"decode|Overlay blobs: zstd decoding in one call against a decoder per blob|go test ./overlay -run ^\$ -bench BlobDecode -count 3"
	"chunkcache|Shared chunk cache: what a next version of an app fetches|bench/chunkcache.sh $runs"
)

for s in "${steps[@]}"; do
	IFS='|' read -r name title _ <<<"$s"
	cmd=${s#"$name|$title|"} # the rest: the command may hold a '|' itself
	if [[ $only != "  " && $only != *" $name "* ]]; then continue; fi
	echo "== $title: $cmd" >&2
	read -ra argv <<<"$cmd"
	"${argv[@]}" | tee "$out/$name.txt"
	quoted=() # as one would type it
	for a in "${argv[@]}"; do
		if [[ $a =~ [^A-Za-z0-9_./=:,-] ]]; then quoted+=("'$a'"); else quoted+=("$a"); fi
	done
	echo "${quoted[*]}" >"$out/$name.cmd"
	date -u +%Y-%m-%d >"$out/$name.date"
done

accel=TCG
if [[ -e /sys/module/kvm_intel || -e /sys/module/kvm_amd ]]; then accel=KVM; fi
{
	echo "# Benchmark results"
	echo
	echo "Written by \`make bench\` (bench/run.sh) on $(date -u +%Y-%m-%d). Each section gives the"
	echo "command that produced it and the day it ran (a step left out of a run keeps its last"
	echo "output); raw outputs are in bench/out/. The analysis of these numbers, and of earlier runs,"
	echo "is in bench/NOTES.md."
	echo
	echo "Machine: $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -n1)),"
	echo "$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r),"
	echo "$(qemu-system-x86_64 --version | head -n1), guests under $accel."
	for s in "${steps[@]}"; do
		IFS='|' read -r name title _ <<<"$s"
		[[ -f $out/$name.cmd ]] || continue
		echo
		echo "## $title"
		echo
		echo "Run on $(cat "$out/$name.date" 2>/dev/null || echo "an earlier day, before steps were dated"):"
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
			if [[ -f bench/$name-rtt.md ]]; then
				echo
				echo "### The RTT sweep"
				echo
				if [[ -f $out/$name-rtt.cmd ]]; then # run on its own
					echo "Run on $(cat "$out/$name-rtt.date"): \`$(cat "$out/$name-rtt.cmd")\`"
					echo
				fi
				cat "bench/$name-rtt.md"
				echo
				echo "![TTFR by RTT at 38 Mbit/s]($name-rtt.svg)"
			fi
			;;
		chunkcache) # a markdown table already
			cat "$out/$name.txt"
			;;
		*)
			echo '```'
			grep -E '^(Benchmark|cpu:)' "$out/$name.txt" || cat "$out/$name.txt"
			echo '```'
			;;
		esac
	done
} >bench/RESULTS.md
echo "wrote bench/RESULTS.md" >&2
