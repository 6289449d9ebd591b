// Package bench holds cloudlet's benchmarks: cloudletfs against its backing files, and (later)
// time-to-first-response of synthesis against its baselines. Results, with the commands that
// produced them, are in RESULTS.md.
package bench
