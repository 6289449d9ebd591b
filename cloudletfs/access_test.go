package cloudletfs_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
)

// The user a dropped child runs as, and a third one that is neither it nor us.
const (
	childUID = 65534
	thirdUID = 65533
)

// requireRoot fails: dropping to another uid, as these tests do, needs root (CI runs as root).
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test drops a child process to another uid, which needs root")
	}
}

// reachableDir is a new directory that every user can traverse (but not list), with the same
// room below it as t.TempDir: a dropped child must be able to walk to a mount point by path,
// which t.TempDir's 0700 parent forbids.
func reachableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cloudletfs-reach-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// asUser runs dd as uid (and gid) with no supplementary groups and returns its stdout, or an
// error with its stderr.
func asUser(uid uint32, args ...string) ([]byte, error) {
	cmd := exec.Command("dd", append(args, "status=none")...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// TestMountPermissions: only the mount's user (QEMU's), or this process's user when there is
// none, can open the images; any other local user gets EACCES, for reads and writes, and
// reaches neither stats/ nor streams/. The child opens each image by its full path.
func TestMountPermissions(t *testing.T) {
	requireRoot(t)
	f := newFixture(t, t.TempDir(), 31)
	tests := []struct {
		name       string
		user       *cloudletfs.User
		allowed    bool // the child may open the images
		allowOther bool
	}{
		{"no user: the server's alone", nil, false, false},
		{"a third user's", &cloudletfs.User{UID: thirdUID, GID: thirdUID}, false, true},
		{"the child's", &cloudletfs.User{UID: childUID, GID: childUID}, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mp, remove, err := cloudletfs.PrepareMountPoint(filepath.Join(reachableDir(t), "mnt"), filepath.Join(reachableDir(t), "run"), tc.user)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(remove)
			m := f.mountAt(t, mp, t.TempDir(), nil, cloudletfs.MountOptions{User: tc.user})
			checkMountOptions(t, mp, tc.allowOther)
			for _, name := range []string{"disk", "memory"} {
				path := m.path(name, "image")
				// Chunk 2 is pending: a read fetches it.
				got, err := asUser(childUID, "if="+path, fmt.Sprintf("bs=%d", chunk.Size), "skip=2", "count=1")
				wroteErr := func() error {
					_, err := asUser(childUID, "if=/dev/zero", "of="+path, "bs=1", "count=0", "conv=notrunc")
					return err
				}()
				if !tc.allowed {
					for what, err := range map[string]error{"read": err, "write": wroteErr} {
						if err == nil || !strings.Contains(err.Error(), "Permission denied") {
							t.Errorf("uid %d opening %s to %s: %v, want Permission denied", childUID, path, what, err)
						}
					}
					continue
				}
				if err != nil || wroteErr != nil {
					t.Fatalf("uid %d opening %s: read: %v; write: %v", childUID, path, err, wroteErr)
				}
				checkBytes(t, name+" read by uid 65534", got, f.want[name][2*chunk.Size:3*chunk.Size], 2*chunk.Size)
			}
			for _, p := range []string{m.path("stats", "disk"), m.path("streams", "io")} {
				if _, err := asUser(childUID, "if="+p, "count=0"); err == nil || !strings.Contains(err.Error(), "Permission denied") {
					t.Errorf("uid %d opening %s: %v, want Permission denied", childUID, p, err)
				}
			}
			checkOwners(t, m, tc.user)
		})
	}
}

// checkMountOptions reads the mount's options: default_permissions always, allow_other only
// for another user.
func checkMountOptions(t *testing.T, mp string, allowOther bool) {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(mp))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		super := m.VFSOptions
		if !strings.Contains(super, "default_permissions") {
			t.Errorf("mount options %s: no default_permissions", super)
		}
		if got := strings.Contains(super, "allow_other"); got != allowOther {
			t.Errorf("mount options %s: allow_other is %v, want %v", super, got, allowOther)
		}
		return
	}
	t.Fatalf("no mount at %s in mountinfo", mp)
}

// checkOwners stats every node: the images are 0600 and their user's, everything else ours.
func checkOwners(t *testing.T, m *mounted, user *cloudletfs.User) {
	t.Helper()
	imageUID, rootMode := uint32(os.Geteuid()), os.FileMode(0o500)
	if user != nil {
		imageUID, rootMode = user.UID, 0o511
	}
	tests := []struct {
		path string
		uid  uint32
		mode os.FileMode
	}{
		{m.path(), 0, os.ModeDir | rootMode},
		{m.path("disk"), imageUID, os.ModeDir | 0o500},
		{m.path("disk", "image"), imageUID, 0o600},
		{m.path("memory", "image"), imageUID, 0o600},
		{m.path("stats"), 0, os.ModeDir | 0o500},
		{m.path("stats", "memory"), 0, 0o400},
		{m.path("streams", "chunks_fetched"), 0, 0o400},
	}
	for _, tc := range tests {
		st, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if uid := st.Sys().(*syscall.Stat_t).Uid; uid != tc.uid || st.Mode() != tc.mode {
			t.Errorf("%s: uid %d, mode %v; want uid %d, mode %v", tc.path, uid, st.Mode(), tc.uid, tc.mode)
		}
	}
}

// TestPrepareMountPoint: a mount for another user goes to an unguessable name in a run
// directory that others can traverse but not list; a run directory that is a link, or a mount
// point out of the user's reach, is refused.
func TestPrepareMountPoint(t *testing.T) {
	requireRoot(t)
	user := &cloudletfs.User{UID: childUID, GID: childUID}
	reach := reachableDir(t)
	run := filepath.Join(reach, "run")
	mp, remove, err := cloudletfs.PrepareMountPoint(filepath.Join(reach, "unused"), run, user)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(mp) != run || len(filepath.Base(mp)) != 32 {
		t.Errorf("mount point %s, want 32 hex digits in %s", mp, run)
	}
	if st, err := os.Stat(run); err != nil || st.Mode().Perm() != 0o711 {
		t.Errorf("run directory: %v, %v; want mode 0711", st.Mode(), err)
	}
	if _, err := asUser(childUID, "if="+run, "count=0"); err == nil {
		t.Errorf("uid %d could open the run directory for listing", childUID)
	}
	remove()
	if _, err := os.Stat(mp); !os.IsNotExist(err) {
		t.Errorf("mount point after remove: %v, want gone", err)
	}

	// What a crashed run left (an old directory, unmounted) is swept; a young one, which a
	// live run may be about to mount on, is not.
	old, young := filepath.Join(run, "old"), filepath.Join(run, "young")
	os.Mkdir(old, 0o700)
	os.Mkdir(young, 0o700)
	long := time.Now().Add(-2 * time.Hour)
	os.Chtimes(old, long, long)
	_, remove, err = cloudletfs.PrepareMountPoint("", run, user)
	if err != nil {
		t.Fatal(err)
	}
	remove()
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("stale mount point: %v, want swept", err)
	}
	if _, err := os.Stat(young); err != nil {
		t.Errorf("young mount point: %v, want kept", err)
	}

	link := filepath.Join(reach, "link")
	if err := os.Symlink(t.TempDir(), link); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cloudletfs.PrepareMountPoint("", link, user); err == nil || !strings.Contains(err.Error(), "not a directory owned by") {
		t.Errorf("run directory that is a link: %v, want refused", err)
	}

	// A mount point below a 0700 directory cannot be reached by the user: Mount says so.
	f := newFixture(t, t.TempDir(), 32)
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: t.TempDir(), Images: f.configs, Demander: &cloudletfs.MemSource{}, Identity: "fixture"})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	hidden := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(hidden, 0o700)
	if mnt, err := fsys.Mount(hidden, cloudletfs.MountOptions{User: user}); err == nil {
		mnt.Unmount()
		t.Fatal("mounted for uid 65534 below a 0700 directory, want an error")
	} else if !strings.Contains(err.Error(), "out of reach of uid 65534") {
		t.Errorf("mount below a 0700 directory: %v, want out of reach", err)
	}
}
