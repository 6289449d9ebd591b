package main

import (
	"os/exec"
	"testing"
)

// TestUsageOwnNotChildren: a process's own CPU time and peak RSS leave out its children's,
// which Wait's rusage (the tree) includes: the cloudlet process's figures must not be QEMU's.
func TestUsageOwnNotChildren(t *testing.T) {
	// The outer shell idles while a child shell burns CPU; it outlives the child a little so
	// that its RSS is sampled.
	cmd := exec.Command("sh", "-c", `sh -c 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done'; sleep 0.3`)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := watchUsage(cmd.Process.Pid)
	u, err := w.exited()
	if werr := cmd.Wait(); werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatal(err)
	}
	u.withTree(cmd.ProcessState)
	if u.TreeCPU < 0.1 {
		t.Fatalf("tree CPU %.3f s: the child's busy loop did not count", u.TreeCPU)
	}
	if u.CPU > u.TreeCPU/2 {
		t.Errorf("own CPU %.3f s of a tree's %.3f s: the child's time counted as the process's own", u.CPU, u.TreeCPU)
	}
	if u.PeakRSS <= 0 || u.TreePeakRSS < u.PeakRSS {
		t.Errorf("peak RSS %d, tree %d: want 0 < own ≤ tree", u.PeakRSS, u.TreePeakRSS)
	}
}
