package vm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestSweepRunDirs: the run directory of a process that died without cleaning up is removed at
// the next start; a live process's, ours, and unknown names stay.
func TestSweepRunDirs(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cases := []struct {
		name string
		gone bool
	}{
		{fmt.Sprintf("cloudlet-vm-%d-123", dead.Process.Pid), true},
		{fmt.Sprintf("cloudlet-vm-%d-456", os.Getpid()), false},
		{fmt.Sprintf("cloudlet-vm-%d-789", os.Getppid()), false},
		{"cloudlet-vm-12345", false}, // an older name without a PID
		{"something-else", false},
	}
	for _, c := range cases {
		if err := os.MkdirAll(filepath.Join(dir, c.name, "inner"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	sweepRunDirs(dir)
	for _, c := range cases {
		_, err := os.Stat(filepath.Join(dir, c.name))
		if gone := os.IsNotExist(err); gone != c.gone {
			t.Errorf("%s: removed %v, want %v", c.name, gone, c.gone)
		}
	}
}
