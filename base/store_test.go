package base_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/vm"
)

// newTestBase commits a small synthetic base: a disk with data among zero chunks, a memory
// image of the VM's RAM size, and a device state. No QEMU is needed to test the store.
func newTestBase(t *testing.T, s *base.Store, seed int64) *base.Base {
	t.Helper()
	d, err := s.NewDraft()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(seed))
	cfg := vm.DefaultConfig()
	cfg.MemoryBytes = 16 << 20
	disk := make([]byte, 1<<20+100) // a short last chunk too
	rng.Read(disk[8192:20000])
	mem := make([]byte, cfg.MemoryBytes)
	rng.Read(mem[:1<<20])
	dev := make([]byte, 5000)
	rng.Read(dev)
	for name, b := range map[string][]byte{base.DiskFile: disk, base.MemoryFile: mem, base.DevstateFile: dev, base.KernelFile: []byte("kernel")} {
		if err := os.WriteFile(d.Path(name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := d.Commit(context.Background(), base.Manifest{Name: "test", VM: cfg, Accel: "tcg"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCommitListGet(t *testing.T) {
	s, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := newTestBase(t, s, 1)
	if len(b.ID) != 64 {
		t.Fatalf("ID %q", b.ID)
	}
	// The chunk index holds one digest per chunk, matching the data.
	idx, err := os.ReadFile(b.Path(base.DiskIndexFile))
	if err != nil {
		t.Fatal(err)
	}
	disk, _ := os.ReadFile(b.Path(base.DiskFile))
	if int64(len(idx)) != chunk.Count(int64(len(disk)))*chunk.DigestSize {
		t.Fatalf("index has %d bytes for %d disk bytes", len(idx), len(disk))
	}
	for i := int64(0); i < chunk.Count(int64(len(disk))); i++ {
		want := chunk.Sum(disk[i*chunk.Size : min((i+1)*chunk.Size, int64(len(disk)))])
		if !bytes.Equal(idx[i*32:(i+1)*32], want[:]) {
			t.Fatalf("index entry %d is wrong", i)
		}
	}
	if err := b.Verify(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].ID != b.ID {
		t.Fatalf("list: %v, %v", list, err)
	}
	if opts := b.VMOptions(); opts.Kernel != b.Path(base.KernelFile) || opts.Initrd != "" || opts.Config.MemoryBytes != 16<<20 {
		t.Fatalf("VM options %+v", opts)
	}

	tests := []struct {
		name, id, wantErr string
	}{
		{"full ID", b.ID, ""},
		{"prefix of 8", b.ID[:8], ""},
		{"upper case", strings.ToUpper(b.ID[:12]), ""},
		{"prefix of 7", b.ID[:7], "at least 8"},
		{"not hex", "zzzzzzzzzz", "not hexadecimal"},
		{"unknown", strings.Repeat("0", 64), "no such base"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Get(tc.id)
			if tc.wantErr == "" {
				if err != nil || got.ID != b.ID {
					t.Fatalf("Get(%q) = %v, %v", tc.id, got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Get(%q) error %v, want %q", tc.id, err, tc.wantErr)
			}
		})
	}
	if _, err := s.Get(strings.Repeat("0", 64)); !errors.Is(err, base.ErrNotFound) {
		t.Fatalf("unknown ID: %v is not ErrNotFound", err)
	}

	// A base whose file was damaged fails Verify and names the file.
	f, _ := os.OpenFile(b.Path(base.DiskFile), os.O_WRONLY, 0)
	f.WriteAt([]byte{0xff}, 9000)
	f.Close()
	if err := b.Verify(context.Background(), nil); err == nil || !strings.Contains(err.Error(), base.DiskFile) {
		t.Fatalf("verify of a damaged disk: %v", err)
	}

	if err := s.Delete(b.ID[:10]); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Fatalf("deleted base still listed: %v", list)
	}
}

func TestDraftsAreInvisibleAndCleaned(t *testing.T) {
	home := t.TempDir()
	s, err := base.Open(home)
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.NewDraft()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(d.Path(base.DiskFile), []byte("half"), 0o644)
	if list, err := s.List(); len(list) != 0 || err != nil {
		t.Fatalf("a draft is listed: %v, %v", list, err)
	}
	// While its creator holds it, a second Open leaves the draft alone.
	if _, err := base.Open(home); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.Dir); err != nil {
		t.Fatalf("live draft removed: %v", err)
	}
	// Simulate a crash: the lock is released without Discard. The next Open cleans up.
	d.Discard()
	d2, _ := s.NewDraft()
	dir2 := d2.Dir
	closeLockOnly(t, d2)
	if _, err := base.Open(home); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir2); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("abandoned draft still there: %v", err)
	}
}

// closeLockOnly releases a draft's lock the way a crashed process would, keeping its files.
func closeLockOnly(t *testing.T, d *base.Draft) {
	t.Helper()
	backup := d.Dir + ".keep"
	if err := os.Rename(d.Dir, backup); err != nil {
		t.Fatal(err)
	}
	d.Discard() // closes the lock; the directory it removes is gone already
	if err := os.Rename(backup, d.Dir); err != nil {
		t.Fatal(err)
	}
}

func TestExportImport(t *testing.T) {
	ctx := context.Background()
	src, _ := base.Open(t.TempDir())
	b := newTestBase(t, src, 2)
	export := filepath.Join(t.TempDir(), "base.export")
	f, err := os.Create(export)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Export(ctx, f, nil); err != nil {
		t.Fatal(err)
	}
	f.Close()
	good, _ := os.ReadFile(export)

	dst, _ := base.Open(t.TempDir())
	got, isNew, err := dst.Import(ctx, bytes.NewReader(good), nil)
	if err != nil || !isNew || got.ID != b.ID {
		t.Fatalf("import: %v, new %v, %v (want ID %s)", got, isNew, err, b.ID)
	}
	if err := got.Verify(ctx, nil); err != nil {
		t.Fatal(err)
	}
	// The memory image is mostly zeros; the import writes them as holes.
	if used := statBlocks(t, got.Path(base.MemoryFile)); used > 4<<20 {
		t.Errorf("imported memory image uses %d bytes on disk; want it sparse", used)
	}
	if _, isNew, err := dst.Import(ctx, bytes.NewReader(good), nil); err != nil || isNew {
		t.Fatalf("second import: new %v, %v", isNew, err)
	}

	flipped := append([]byte(nil), good...)
	flipped[len(flipped)/2] ^= 0x55
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"truncated", good[:len(good)/2], "truncated"},
		{"empty", nil, "truncated"},
		{"flipped byte", flipped, ""},
		{"not an export", []byte("hello, this is not zstd"), "not a base export"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fresh, _ := base.Open(t.TempDir())
			_, _, err := fresh.Import(ctx, bytes.NewReader(tc.data), nil)
			var ie *base.ImportError
			if !errors.As(err, &ie) {
				t.Fatalf("error %v (%T), want an ImportError", err, err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q does not mention %q", err, tc.wantErr)
			}
			if list, _ := fresh.List(); len(list) != 0 {
				t.Fatalf("a failed import left a base: %v", list)
			}
			if left, _ := os.ReadDir(filepath.Join(fresh.Home(), "tmp")); len(left) != 0 {
				t.Fatalf("a failed import left a draft")
			}
		})
	}
}

func statBlocks(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}
