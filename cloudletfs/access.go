package cloudletfs

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Who may open what. A mount always has default_permissions: the kernel checks the modes and
// owners that the nodes report, as for any file. The images (guest RAM and disks) are 0600,
// owned by the one user that must open them: this process's user, or MountOptions.User
// (QEMU's, when it runs as another user). stats/ and streams/ are this process's alone (0400).
// allow_other, without which the kernel lets nobody but the mounting user in, is set only
// when that other user exists.

const (
	imageMode  = 0o600
	pseudoMode = 0o400
	dirMode    = 0o500 // nothing is ever created in a mount
	// traverseMode lets QEMU's user pass the root on the way to its image's directory,
	// without listing it; the image's directory and file are that user's alone.
	traverseMode = 0o011
)

// owners are the users that the nodes of one mount report.
type owners struct {
	server User // this process's user: owns the tree, stats/ and streams/
	images User // owns disk/, memory/ and their images: server, or MountOptions.User
	other  bool // images is not server: allow_other is on, and the root is traversable
}

func newOwners(u *User) owners {
	o := owners{server: User{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}}
	o.images = o.server
	if u != nil {
		o.images = *u
		o.other = u.UID != o.server.UID
	}
	return o
}

func (o owners) rootMode() uint32 {
	if o.other {
		return dirMode | traverseMode
	}
	return dirMode
}

// RunDir is where a session's mount point goes when QEMU runs as another user. That user
// must be able to traverse every directory above its images, and a store's home (say, in
// root's home directory) usually cannot be traversed by others. RunDir is runtime state, on a
// tmpfs, like the mounts; it is 0711 (traversable, not listable) and each mount point in it
// has an unguessable name.
const RunDir = "/run/cloudlet"

// runDirMode lets QEMU's user reach a mount point whose name it was given, but not list them.
const runDirMode = 0o711

// PrepareMountPoint makes the directory to mount on. Without user (QEMU runs as this
// process's user) that is dir itself, 0700. With user, it is a new directory with an
// unguessable name in runDir, where that user can reach it; remove deletes it after the
// unmount. Only root can run QEMU as another user, so only root needs runDir.
func PrepareMountPoint(dir, runDir string, user *User) (mountPoint string, remove func(), err error) {
	if user == nil || user.UID == uint32(os.Geteuid()) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", nil, fmt.Errorf("mount point: %w", err)
		}
		return dir, func() {}, nil
	}
	if err := makeRunDir(runDir); err != nil {
		return "", nil, err
	}
	sweepRunDir(runDir)
	var name [16]byte
	if _, err := rand.Read(name[:]); err != nil {
		return "", nil, fmt.Errorf("mount point name: %w", err)
	}
	mp := filepath.Join(runDir, hex.EncodeToString(name[:]))
	if err := os.Mkdir(mp, 0o700); err != nil {
		return "", nil, fmt.Errorf("mount point: %w", err)
	}
	return mp, func() { os.Remove(mp) }, nil
}

// makeRunDir creates runDir, or checks that the one there is ours and no link, and sets its
// mode: anybody who could swap it could redirect QEMU's images.
func makeRunDir(runDir string) error {
	if err := os.Mkdir(runDir, runDirMode); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("run directory: %w", err)
	}
	st, err := os.Lstat(runDir)
	if err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !st.IsDir() || !ok || sys.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("run directory %s is not a directory owned by uid %d", runDir, os.Geteuid())
	}
	if err := os.Chmod(runDir, runDirMode); err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	return nil
}

// staleMountPoint is the age after which an unmounted directory in the run directory is
// left over from a crash: a live one is mounted on within moments of being made.
const staleMountPoint = time.Hour

// sweepRunDir clears what crashed runs left in runDir: dead mounts, then their directories.
// Nothing is known about the mounts of live runs but that they answer: they are left alone.
func sweepRunDir(runDir string) {
	entries, _ := os.ReadDir(runDir)
	for _, e := range entries {
		dir := filepath.Join(runDir, e.Name())
		ClearStale(dir)
		if mounted, _ := mountedAt(dir); mounted {
			continue
		}
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > staleMountPoint {
			os.Remove(dir)
		}
	}
}

// checkReachable says which directory above dir the user cannot traverse, by the mode bits
// (ACLs and supplementary groups are not looked at): QEMU running as that user would fail to
// open its images with nothing but "Permission denied".
func checkReachable(dir string, u User) error {
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("mount point %s: %w", dir, err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		mode := uint32(st.Mode().Perm())
		var x bool
		switch {
		case u.UID == 0:
			x = true
		case sys.Uid == u.UID:
			x = mode&0o100 != 0
		case sys.Gid == u.GID:
			x = mode&0o010 != 0
		default:
			x = mode&0o001 != 0
		}
		if !x {
			return fmt.Errorf("mount point %s is out of reach of uid %d: %s is mode %04o, owned by uid %d (mount where that user can traverse every directory above)",
				dir, u.UID, d, mode, sys.Uid)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
