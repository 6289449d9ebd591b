//go:build cgo && !nolibvirt

package vm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// confineDomain prepares what a domain's QEMU of another user needs. A libvirt domain gets no
// open files from us, and the store's directories are root's: for images outside a cloudletfs
// mount (base create and resume: the operator's own disk) QEMU runs as root. Guests built
// from overlays always run on cloudletfs mounts, which expose the images to the user.
func confineDomain(opts Options, runDir string) (Options, error) {
	if !opts.RunAs.switches() {
		return opts, nil
	}
	if !opts.ServedByCaller {
		logf(opts.Log, "libvirt: QEMU runs as root, not %s: libvirt cannot hand it the store's files\n", opts.RunAs.Name)
		opts.RunAs = nil
		return opts, nil
	}
	return giveRunDir(opts, runDir)
}

// launcherBinary is the path of this binary as QEMU's user can run it. Under a DAC label
// libvirt starts the emulator script as that user, and the script runs our binary: one in a
// directory others cannot enter (a test binary's, a private install) is copied, once per
// version, to a root-owned file that anyone may run.
func launcherBinary(self string) (string, error) {
	if othersCanRun(self) {
		return self, nil
	}
	in, err := os.Open(self)
	if err != nil {
		return "", fmt.Errorf("qemu launcher: %w", err)
	}
	defer in.Close()
	h := sha256.New()
	if _, err := io.Copy(h, in); err != nil {
		return "", fmt.Errorf("qemu launcher: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	dir, err := launcherDir()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "cloudlet-qemu-launcher-bin-"+sum[:16])
	if othersCanRun(path) && ownFile(path) {
		return path, nil
	}
	err = installExecutable(path, func(out *os.File) error {
		if _, err := in.Seek(0, io.SeekStart); err != nil {
			return err
		}
		_, err := io.Copy(out, in)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("qemu launcher: copy %s: %w", self, err)
	}
	return path, nil
}

// installExecutable writes an executable file at path: through a temporary file of its own
// (two cloudlets installing at once must not share one), mode 0755 whatever the umask (QEMU's
// user runs it), renamed into place once complete.
func installExecutable(path string, fill func(*os.File) error) error {
	out, err := os.CreateTemp(filepath.Dir(path), ".install-*")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	err = out.Chmod(0o755)
	if err == nil {
		err = fill(out)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(out.Name(), path)
}

// launcherDir holds the emulator scripts and launcher copies that libvirt runs. Not a shared
// temporary directory: libvirt executes what is there, so nobody but us may write it.
func launcherDir() (string, error) {
	dir := "/run/cloudlet-launchers"
	if os.Geteuid() != 0 {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("qemu launcher: %w", err)
		}
		dir = filepath.Join(cache, "cloudlet", "launchers")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("qemu launcher: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // whatever the umask made of it
		return "", fmt.Errorf("qemu launcher: %w", err)
	}
	if !ownFile(dir) {
		return "", fmt.Errorf("qemu launcher: %s is not ours alone (owner or mode)", dir)
	}
	return dir, nil
}

// ownFile says whether path (not a symlink) belongs to us and no one else may write it.
func ownFile(path string) bool {
	st, err := os.Lstat(path)
	if err != nil {
		return false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && st.Mode()&os.ModeSymlink == 0 && int(sys.Uid) == os.Geteuid() && st.Mode().Perm()&0o022 == 0
}

// othersCanRun says whether a user with no special rights can execute path: it and every
// directory above it allow others to execute (enter).
func othersCanRun(path string) bool {
	for p := path; ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return false
		}
		if p == "/" || p == "." {
			return true
		}
	}
}
