package cloudletfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCheckFUSEDevice(t *testing.T) {
	tests := []struct{ path, want string }{
		{"/nonexistent/fuse", "does not exist: load the fuse module"},
		{"/", "cannot use /"},
	}
	for _, tc := range tests {
		if err := checkFUSEDevice(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("checkFUSEDevice(%s) = %v, want %q", tc.path, err, tc.want)
		}
	}
}

// TestMountedAt: a mount point is found by its path, also with a space in it (mountinfo
// writes it as \040), and a plain directory or a path below a mount is not one.
func TestMountedAt(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a tmpfs, which needs root (CI runs as root)")
	}
	dir := t.TempDir()
	mounted := filepath.Join(dir, "a mount")
	for _, d := range []string{mounted, filepath.Join(dir, "plain")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", mounted, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs at %s: %v", mounted, err)
	}
	t.Cleanup(func() { unix.Unmount(mounted, unix.MNT_DETACH) })
	if err := os.Mkdir(filepath.Join(mounted, "below"), 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dir        string
		want       bool
		wantFSType string
	}{
		{mounted, true, "tmpfs"},
		{filepath.Join(dir, "plain"), false, ""},
		{filepath.Join(mounted, "below"), false, ""},
	}
	for _, tc := range tests {
		if got, fstype := mountedAt(tc.dir); got != tc.want || fstype != tc.wantFSType {
			t.Errorf("mountedAt(%q): got %v, %q, want %v, %q", tc.dir, got, fstype, tc.want, tc.wantFSType)
		}
	}
}
