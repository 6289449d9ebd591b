package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// runDirPrefix names a VM's private directory in the temporary directory: QEMU's monitor and
// serial sockets, and its copies of the kernel and initrd.
const runDirPrefix = "cloudlet-vm-"

// makeRunDir makes a VM's private directory. Its name carries our PID, so that a later start
// can remove the directories of processes that died without cleaning up (a SIGKILL, a crash):
// each holds a copy of a kernel and initrd.
func makeRunDir() (string, error) {
	sweepRunDirs(os.TempDir())
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", runDirPrefix, os.Getpid()))
	if err != nil {
		return "", fmt.Errorf("vm run directory: %w", err)
	}
	return dir, nil
}

// sweepRunDirs removes the run directories in dir whose process is gone. Directories of live
// processes, and of names it does not know, are left alone.
func sweepRunDirs(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		pid, ok := runDirPID(e.Name())
		if !ok || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// runDirPID reads the PID from a run directory's name, cloudlet-vm-PID-RANDOM.
func runDirPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, runDirPrefix)
	if !ok {
		return 0, false
	}
	s, _, ok := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(s)
	return pid, ok && err == nil && pid > 0
}

// processAlive says whether pid exists (a PID reused since only delays a sweep).
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
