package base_test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/internal/testguest"
)

// checkPrivate walks dir and fails for anything that group or others may access.
func checkPrivate(t *testing.T, dir string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(path)
		if err != nil {
			return err
		}
		n++
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: mode %v, want no group or other bits", path, st.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Fatalf("walked only %d entries of %s", n, dir)
	}
}

// TestStoreIsPrivate runs the store's flows under a permissive umask: commit a base (with
// files that QEMU left 0644), import one, and serve a base through cloudletfs with its cache
// and mount point in a draft, as a synthesis does. Nothing in the home is open to group or
// others, during the mount and after.
func TestStoreIsPrivate(t *testing.T) {
	testguest.RequireFUSE(t)
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	ctx := context.Background()
	home := filepath.Join(t.TempDir(), "home")
	s, err := base.Open(home)
	if err != nil {
		t.Fatal(err)
	}
	b := newTestBase(t, s, 5)
	var export bytes.Buffer
	if err := b.Export(ctx, &export, nil); err != nil {
		t.Fatal(err)
	}
	s2, err := base.Open(filepath.Join(t.TempDir(), "home2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s2.Import(ctx, &export, nil); err != nil {
		t.Fatal(err)
	}
	checkPrivate(t, s2.Home())

	d, err := s.NewDraft()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Discard()
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: d.Path("cache"), Identity: "test", Capture: true, Images: []cloudletfs.ImageConfig{
		{Name: "disk", Size: b.Manifest.Files[base.DiskFile].Size, Base: b.Path(base.DiskFile)},
		{Name: "memory", Size: b.Manifest.Files[base.MemoryFile].Size, Base: b.Path(base.MemoryFile)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	mp, remove, err := cloudletfs.PrepareMountPoint(d.Path("mnt"), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	mnt, err := fsys.Mount(mp, cloudletfs.MountOptions{})
	if err != nil {
		fsys.Close()
		t.Fatal(err)
	}
	if _, err := fsys.Image("disk").WriteAt(ctx, []byte("dirty"), 0); err != nil {
		t.Error(err)
	}
	checkPrivate(t, home)
	if err := mnt.Unmount(); err != nil {
		t.Error(err)
	}
	if err := fsys.Close(); err != nil {
		t.Error(err)
	}
	checkPrivate(t, home)
}

// TestOpenTightensOldStore: a store that an older version made 0755, with a base and logs in
// it, is 0700 at the top once opened again, so nothing below is reachable by others.
func TestOpenTightensOldStore(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home")
	s, err := base.Open(home)
	if err != nil {
		t.Fatal(err)
	}
	newTestBase(t, s, 6)
	dirs := []string{home, filepath.Join(home, "bases"), filepath.Join(home, "tmp"), filepath.Join(home, "logs")}
	os.Mkdir(dirs[3], 0o755)
	for _, d := range dirs {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := base.Open(home); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("%s after Open: %v (%v), want mode 0700", d, st.Mode().Perm(), err)
		}
	}
}
