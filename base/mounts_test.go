package base_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cloudlet/cloudlet/base"
)

// TestStaleDraftMountsDetached: an abandoned draft that still holds mounts (a crashed
// capture's cloudletfs) is removed on the next Open, also when a mount point's name has a
// space, which mountinfo writes escaped (\040).
func TestStaleDraftMountsDetached(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a tmpfs, which needs root (CI runs as root)")
	}
	tests := []struct{ name, mount string }{
		{"plain", "mnt"},
		{"space", "mnt dir"},
		{"nested", "a b/c"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			home := t.TempDir()
			s, err := base.Open(home)
			if err != nil {
				t.Fatal(err)
			}
			d, err := s.NewDraft()
			if err != nil {
				t.Fatal(err)
			}
			mp := filepath.Join(d.Dir, tc.mount)
			if err := os.MkdirAll(mp, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mount("tmpfs", mp, "tmpfs", 0, "size=1m"); err != nil {
				t.Fatalf("mount tmpfs at %s: %v", mp, err)
			}
			t.Cleanup(func() { unix.Unmount(mp, unix.MNT_DETACH) })
			if err := os.WriteFile(filepath.Join(mp, "f"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			closeLockOnly(t, d)
			if _, err := base.Open(home); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(d.Dir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("abandoned draft with a mount at %q still there: %v", tc.mount, err)
			}
		})
	}
}
