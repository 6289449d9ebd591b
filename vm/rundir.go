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

// rootRunDirs holds the run directories when we run as root. Not the shared temporary
// directory: a run directory is handed to QEMU's user, and in a sticky world-writable parent
// that user could rename it and put a symlink in its place, through which root would then
// create and chown files. Here only root may add or rename entries; QEMU's user may pass.
const rootRunDirs = "/run/cloudlet-vm"

// makeRunDir makes a VM's private directory. Its name carries our PID, so that a later start
// can remove the directories of processes that died without cleaning up (a SIGKILL, a crash):
// each holds a copy of a kernel and initrd.
func makeRunDir() (string, error) {
	parent, err := runDirParent()
	if err != nil {
		return "", err
	}
	sweepRunDirs(parent)
	dir, err := os.MkdirTemp(parent, fmt.Sprintf("%s%d-", runDirPrefix, os.Getpid()))
	if err != nil {
		return "", fmt.Errorf("vm run directory: %w", err)
	}
	return dir, nil
}

// runDirParent is where run directories go: rootRunDirs as root, the temporary directory
// otherwise (QEMU then runs as our own user: there is nobody to hand a directory to).
func runDirParent() (string, error) {
	if os.Geteuid() != 0 {
		return os.TempDir(), nil
	}
	if err := os.MkdirAll(rootRunDirs, 0o711); err != nil {
		return "", fmt.Errorf("vm run directory: %w", err)
	}
	if err := os.Chmod(rootRunDirs, 0o711); err != nil {
		return "", fmt.Errorf("vm run directory: %w", err)
	}
	st, err := os.Lstat(rootRunDirs)
	if err != nil {
		return "", fmt.Errorf("vm run directory: %w", err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || !st.IsDir() || sys.Uid != 0 {
		return "", fmt.Errorf("vm run directory: %s is not a directory of root's", rootRunDirs)
	}
	return rootRunDirs, nil
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
