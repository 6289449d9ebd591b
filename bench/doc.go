// Package bench holds cloudlet's micro-benchmarks: cloudletfs against its backing files,
// the dirty-limit stall, and overlays against qcow2+xz. The time-to-first-response harness is
// bench/ttfr, the realistic guest bench/realistic. 'make bench' (bench/run.sh) runs them all
// and writes RESULTS.md with the commands and the machine; NOTES.md holds the analysis.
package bench
