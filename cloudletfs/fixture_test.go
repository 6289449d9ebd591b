package cloudletfs_test

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/internal/testguest"
)

// fixture is a pair of images with a known plan: base chunks, zero chunks and pending chunks,
// and the full contents (the model) that a reader must see.
type fixture struct {
	dir     string // holds the base files
	configs []cloudletfs.ImageConfig
	want    map[string][]byte // model: the image contents a reader must see
}

// imageSizes: the disk ends in a short chunk, to cover the boundary.
var imageSizes = map[string]int64{"disk": 96*chunk.Size + 1000, "memory": 128 * chunk.Size}

// newFixture writes base files under dir. Chunk i of each image is base (i%4==0), zero
// (i%4==1) or pending (otherwise), with seeded contents.
func newFixture(t testing.TB, dir string, seed int64) *fixture {
	t.Helper()
	f, err := buildFixture(dir, seed)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func buildFixture(dir string, seed int64) (*fixture, error) {
	rng := rand.New(rand.NewSource(seed))
	f := &fixture{dir: dir, want: map[string][]byte{}}
	for _, name := range []string{"disk", "memory"} {
		size := imageSizes[name]
		n := chunk.Count(size)
		base := make([]byte, size)
		rng.Read(base)
		want := make([]byte, size)
		plan := make([]cloudletfs.State, n)
		for i := range n {
			lo, hi := i*chunk.Size, min((i+1)*chunk.Size, size)
			switch i % 4 {
			case 0:
				plan[i] = cloudletfs.StateBase
				copy(want[lo:hi], base[lo:hi])
			case 1:
				plan[i] = cloudletfs.StateZero
			default:
				plan[i] = cloudletfs.StatePending
				rng.Read(want[lo:hi])
			}
		}
		basePath := filepath.Join(dir, name+".base")
		if err := os.WriteFile(basePath, base, 0o444); err != nil {
			return nil, err
		}
		f.configs = append(f.configs, cloudletfs.ImageConfig{Name: name, Size: size, Base: basePath, Plan: plan})
		f.want[name] = want
	}
	return f, nil
}

// open opens the fixture's images over a fresh cache, with no source for pending chunks; the
// FS closes with the test.
func (f *fixture) open(t testing.TB) *cloudletfs.FS {
	t.Helper()
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: t.TempDir(), Images: f.configs, Identity: "fixture"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	return fsys
}

// mounted is a live test mount.
type mounted struct {
	fs    *cloudletfs.FS
	src   *cloudletfs.MemSource
	mnt   *cloudletfs.Mount
	dir   string // mount point
	cache string
}

func (m *mounted) path(parts ...string) string {
	return filepath.Join(append([]string{m.dir}, parts...)...)
}

// mount opens the fixture's images over cacheDir with a MemSource and mounts them; cleanup
// unmounts and closes.
func (f *fixture) mount(t testing.TB, cacheDir string, src *cloudletfs.MemSource, opts cloudletfs.MountOptions) *mounted {
	t.Helper()
	return f.mountAt(t, t.TempDir(), cacheDir, src, opts)
}

// mountAt is mount at the mount point mp.
func (f *fixture) mountAt(t testing.TB, mp, cacheDir string, src *cloudletfs.MemSource, opts cloudletfs.MountOptions) *mounted {
	t.Helper()
	testguest.RequireFUSE(t)
	if src == nil {
		src = &cloudletfs.MemSource{}
	}
	src.Data = f.want
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: cacheDir, Images: f.configs, Demander: src, Identity: "fixture"})
	if err != nil {
		t.Fatal(err)
	}
	src.Attach(fsys)
	mnt, err := fsys.Mount(mp, opts)
	if err != nil {
		fsys.Close()
		t.Fatal(err)
	}
	m := &mounted{fs: fsys, src: src, mnt: mnt, dir: mp, cache: cacheDir}
	t.Cleanup(func() {
		if err := mnt.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		if err := fsys.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := src.Err(); err != nil {
			t.Error(err)
		}
	})
	return m
}

// checkBytes compares got with the model at off and names the first differing chunk.
func checkBytes(t testing.TB, what string, got, want []byte, off int64) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Fatalf("%s: byte %d (chunk %d) is %#x, want %#x", what, off+int64(i), (off+int64(i))/chunk.Size, got[i], want[i])
		}
	}
	t.Fatalf("%s: got %d bytes, want %d", what, len(got), len(want))
}

// eventually polls cond for up to d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func describe(s cloudletfs.State, c int64) string { return fmt.Sprintf("chunk %d (%v)", c, s) }

// expected is the ImageConfig.Expected hook the fixture's overlay would give: the digest of
// each pending chunk's model bytes, and nothing for base and zero chunks.
func (f *fixture) expected(i int) func(int64) (chunk.Digest, bool) {
	cfg := f.configs[i]
	return func(c int64) (chunk.Digest, bool) {
		if cfg.Plan[c] != cloudletfs.StatePending {
			return chunk.Digest{}, false
		}
		lo := c * chunk.Size
		return chunk.Sum(f.want[cfg.Name][lo:min(lo+chunk.Size, cfg.Size)]), true
	}
}

// verified returns the fixture's image configurations with their Expected hooks set.
func (f *fixture) verified() []cloudletfs.ImageConfig {
	cfgs := append([]cloudletfs.ImageConfig(nil), f.configs...)
	for i := range cfgs {
		cfgs[i].Expected = f.expected(i)
	}
	return cfgs
}
