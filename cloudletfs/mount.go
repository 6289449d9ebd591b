package cloudletfs

import (
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// MountOptions tune a mount.
type MountOptions struct {
	// MaxReadAhead caps kernel readahead in bytes (0: the kernel's 128 KiB). 4096 gives exact
	// demand paging of the memory image; larger reads ahead for sequential disk reads.
	MaxReadAhead int
	// ReadAheadKB sets the mount's readahead window (the bdi's read_ahead_kb), beyond the
	// 128 KiB that MaxReadAhead can ask for: with 1 MiB requests, sequential first-touch reads
	// cost a quarter of the FUSE round trips. 0 keeps the kernel's choice.
	ReadAheadKB int
	// RaiseDirtyLimit lifts the kernel's per-mount dirty page limit. A VM whose RAM is a
	// shared mapping of memory/image (capture) is otherwise throttled to the speed at which
	// this process acknowledges writeback, freezing the guest for seconds.
	RaiseDirtyLimit bool
	// User, if set, is the one other user that may open the images (QEMU's, when it runs as
	// another user than this process). Nil exposes them to this process's user only.
	User *User
	// ReadOnly mounts read-only, for inspection: every write and every open for writing
	// fails with EROFS, so nothing reaches the cache.
	ReadOnly bool
	// Log receives unexpected I/O errors and warnings; nil logs to stderr.
	Log   *log.Logger
	Debug bool
}

// User is a numeric user and group, as the kernel checks them.
type User struct {
	UID, GID uint32
}

// Mount is a live cloudletfs mount.
type Mount struct {
	Dir    string
	gate   *gate // the FS behind the mount, once there
	server *fuse.Server
	conn   string // /sys/fs/fuse/connections/N: the kernel side, for aborting
}

// attrTimeout is long: image sizes and attributes never change while mounted.
const attrTimeout = time.Hour

// Mount serves the images at dir. A stale mount left at dir by a crashed run is cleared first.
// The serving process must never access its own mount (go-fuse would deadlock).
func (fsys *FS) Mount(dir string, opts MountOptions) (*Mount, error) {
	return mount(dir, servedGate(fsys), fsys.cfg.Files, opts)
}

// mount serves at dir the tree of g's images and files, whether g has its FS yet or not.
func mount(dir string, g *gate, files []File, opts MountOptions) (*Mount, error) {
	if opts.Log == nil {
		opts.Log = log.New(os.Stderr, "", log.LstdFlags)
	}
	if err := CheckFUSE(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if _, err := ClearStale(dir); err != nil {
		return nil, err
	}
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("mount point: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("mount point %s is not a directory", dir)
	}
	if mounted, fstype := mountedAt(dir); mounted {
		return nil, fmt.Errorf("mount point %s already has a %s mount", dir, fstype)
	}
	own := newOwners(opts.User)
	if own.other {
		if err := checkReachable(dir, own.images); err != nil {
			return nil, err
		}
	}
	timeout := attrTimeout
	root := &rootNode{gate: g, files: files, log: opts.Log, own: own, readOnly: opts.ReadOnly}
	options := []string{"default_permissions"}
	if opts.ReadOnly {
		options = append(options, "ro")
	}
	// As root, go-fuse mounts with mount(2) and opens /dev/fuse without O_CLOEXEC. A child
	// started meanwhile (QEMU!) would inherit the device: if we then die, the connection
	// stays alive with nobody serving it, and that child hangs forever in its exit, flushing
	// to us. So no fork may happen until the descriptor is close-on-exec: hold ForkLock, and
	// mount strictly directly (a fusermount fallback would fork under the lock).
	direct := os.Geteuid() == 0
	if direct {
		syscall.ForkLock.Lock()
	}
	server, err := fs.Mount(dir, root, &fs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		MountOptions: fuse.MountOptions{
			FsName:       "cloudletfs",
			Name:         "cloudletfs",
			MaxWrite:     512 << 10,
			MaxReadAhead: opts.MaxReadAhead,
			// The kernel must not drop cached pages on its own (for instance on a changed
			// mtime): our bytes only change through this mount.
			ExplicitDataCacheControl: true,
			DisableXAttrs:            true,
			DirectMount:              direct,
			DirectMountStrict:        direct,
			// The kernel checks the modes and owners of the nodes (see access.go); other
			// users get in at all only when one of them is to open the images.
			Options:    options,
			AllowOther: own.other,
			Debug:      opts.Debug,
		},
	})
	if direct {
		closeOnExecFUSE()
		syscall.ForkLock.Unlock()
	}
	if err != nil {
		return nil, fmt.Errorf("mount cloudletfs at %s: %w", dir, err)
	}
	mountFusectl()
	m := &Mount{Dir: dir, gate: g, server: server}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err == nil {
		m.conn = fmt.Sprintf("/sys/fs/fuse/connections/%d", unix.Minor(st.Dev))
	}
	if opts.ReadAheadKB > 0 {
		if err := setBDI(dir, "read_ahead_kb", strconv.Itoa(opts.ReadAheadKB)); err != nil {
			opts.Log.Printf("cloudletfs: warning: %v", err)
		}
	}
	if opts.RaiseDirtyLimit {
		if err := raiseDirtyLimit(dir); err != nil {
			opts.Log.Printf("cloudletfs: warning: %v (a VM dirtying memory fast may stall)", err)
		}
	}
	return m, nil
}

// Unmount ends the mount's service and detaches it; the FS must be closed after. Requests in
// flight fail (stop the VM first). If something still holds the mount open (a shell in the
// directory, a process not yet reaped), it is detached lazily and its connection aborted:
// holders get ENOTCONN, and no dead mount is left behind. A pending mount that was never
// served fails its waiting requests with EIO and touches no FS.
func (m *Mount) Unmount() error {
	fsys := m.gate.end()
	if fsys != nil {
		fsys.shutdown()
	}
	if err := syscall.Unmount(m.Dir, 0); err != nil {
		if lerr := syscall.Unmount(m.Dir, unix.MNT_DETACH); lerr != nil {
			// Not privileged for umount(2): fusermount, as go-fuse mounted it.
			if uerr := m.server.Unmount(); uerr != nil {
				return fmt.Errorf("unmount %s: %w (lazy: %v)", m.Dir, uerr, lerr)
			}
		}
		// A mount never served answers every request with EIO from now on, but the kernel
		// retries a failed read: aborting at once would turn some of those answers into
		// ECONNABORTED. Its holders get a moment to see the EIO and close.
		grace := time.Duration(0)
		if fsys == nil {
			grace = pendingUnmountGrace
		}
		m.abortAfter(grace)
	}
	m.server.Wait()
	return nil
}

// pendingUnmountGrace is how long Unmount of a never-served mount waits for the holders of
// its detached mount to close before it aborts the connection.
const pendingUnmountGrace = time.Second

// abortAfter aborts the mount's connection, unless its server ends by itself (the last holder
// of the detached mount closed) within grace.
func (m *Mount) abortAfter(grace time.Duration) {
	if m.conn == "" {
		return
	}
	if grace > 0 {
		ended := make(chan struct{})
		go func() {
			m.server.Wait()
			close(ended)
		}()
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-ended:
			return
		case <-t.C:
		}
		defer func() { <-ended }()
	}
	os.WriteFile(m.conn+"/abort", []byte("1"), 0)
}

// closeOnExecFUSE marks every /dev/fuse descriptor of this process close-on-exec.
func closeOnExecFUSE() {
	entries, _ := os.ReadDir("/proc/self/fd")
	for _, e := range entries {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			if fd, err := strconv.Atoi(e.Name()); err == nil {
				unix.CloseOnExec(fd)
			}
		}
	}
}

// mountFusectl makes /sys/fs/fuse/connections available (as root), so that Unmount can abort
// a connection that something still holds open.
func mountFusectl() {
	const dir = "/sys/fs/fuse/connections"
	if os.Geteuid() != 0 {
		return
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) > 0 {
		return
	}
	if mounted, _ := mountedAt(dir); !mounted {
		unix.Mount("fusectl", dir, "fusectl", 0, "")
	}
}

// CheckFUSE says in one sentence why FUSE cannot be used here, or returns nil.
func CheckFUSE() error { return checkFUSEDevice("/dev/fuse") }

func checkFUSEDevice(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	switch {
	case err == nil:
		f.Close()
		return nil
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s does not exist: load the fuse module (modprobe fuse) or, in a container, pass the device in", path)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("no permission to open %s: run as root, or give this user access to the device", path)
	}
	return fmt.Errorf("cannot use %s: %w", path, err)
}

// ClearStale detaches a dead FUSE mount at dir (its server crashed: every access fails with
// ENOTCONN). It reports whether it cleared one.
func ClearStale(dir string) (bool, error) {
	if mounted, fstype := mountedAt(dir); !mounted || !strings.HasPrefix(fstype, "fuse") {
		return false, nil
	}
	// statfs always asks the server (stat may be answered from cached attributes), so it
	// tells a dead mount from a live one.
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
		return false, nil
	}
	if err := syscall.Unmount(dir, unix.MNT_DETACH); err != nil {
		// Unprivileged: fusermount can detach mounts the user owns.
		if out, ferr := exec.Command("fusermount3", "-u", "-z", dir).CombinedOutput(); ferr != nil {
			return false, fmt.Errorf("clear stale mount at %s: %v; fusermount3: %s", dir, err, strings.TrimSpace(string(out)))
		}
	}
	return true, nil
}

// mountedAt reports whether dir is a mount point, and of what type, from /proc/self/mountinfo.
func mountedAt(dir string) (bool, string) {
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil || len(mounts) == 0 {
		return false, ""
	}
	return true, mounts[0].FSType
}

// raiseDirtyLimit sets the mount's backing device to max_ratio 50 and strict_limit 0. Each
// mount gets a new bdi, named after the mount's device number. Measured: a guest dirtying
// 64 MiB against a server acknowledging at 20 MB/s froze for up to 1.9 s with the defaults
// (max_ratio 1, strict_limit 1); both knobs together removed the stall.
func raiseDirtyLimit(dir string) error {
	return errors.Join(setBDI(dir, "max_ratio", "50"), setBDI(dir, "strict_limit", "0"))
}

// bdiDir is the sysfs directory of the backing device of the mount at dir.
func bdiDir(dir string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("/sys/class/bdi/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)), nil
}

func setBDI(dir, knob, value string) error {
	bdi, err := bdiDir(dir)
	if err == nil {
		err = os.WriteFile(filepath.Join(bdi, knob), []byte(value), 0)
	}
	if err != nil {
		return fmt.Errorf("set %s of the mount at %s to %s: %w", knob, dir, value, err)
	}
	return nil
}

// DirtyLimit reads the bdi settings of the mount at dir, for tests and diagnostics.
func DirtyLimit(dir string) (maxRatio, strictLimit string, err error) {
	bdi, err := bdiDir(dir)
	if err != nil {
		return "", "", err
	}
	a, err := os.ReadFile(filepath.Join(bdi, "max_ratio"))
	if err != nil {
		return "", "", err
	}
	b, err := os.ReadFile(filepath.Join(bdi, "strict_limit"))
	if err != nil {
		return "", "", err
	}
	return strings.TrimSpace(string(a)), strings.TrimSpace(string(b)), nil
}
