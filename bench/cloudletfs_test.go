package bench

import (
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/internal/testguest"
)

// These benchmarks put cloudletfs side by side with reading its backing file directly, each
// from a cold page cache ("first touch"): the backing file's pages are dropped with
// POSIX_FADV_DONTNEED, and cloudletfs gets a fresh mount, before each pass. Run:
//
//	go test ./bench -run '^$' -bench . -benchtime 20x
//
// and compare the direct and cloudletfs lines of each benchmark.

const benchImage = 64 << 20

// backing writes a seeded image file of benchImage bytes.
func backing(b *testing.B) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "base.img")
	data := make([]byte, benchImage)
	rand.New(rand.NewSource(1)).Read(data)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.Fatal(err)
	}
	return path
}

func dropCache(b *testing.B, path string) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	f.Sync()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
}

// benchMount serves one image, "disk", whose base is path, with the given plan.
type benchMount struct {
	fs  *cloudletfs.FS
	mnt *cloudletfs.Mount
	src *cloudletfs.MemSource
}

func mountImage(b *testing.B, path string, plan []cloudletfs.State, opts cloudletfs.MountOptions) *benchMount {
	b.Helper()
	testguest.RequireFUSE(b)
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	src := &cloudletfs.MemSource{Data: map[string][]byte{"disk": data}}
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: b.TempDir(), Demander: src,
		Images: []cloudletfs.ImageConfig{{Name: "disk", Size: int64(len(data)), Base: path, Plan: plan}}})
	if err != nil {
		b.Fatal(err)
	}
	src.Attach(fsys)
	mnt, err := fsys.Mount(b.TempDir(), opts)
	if err != nil {
		fsys.Close()
		b.Fatal(err)
	}
	return &benchMount{fs: fsys, mnt: mnt, src: src}
}

func (m *benchMount) path() string { return filepath.Join(m.mnt.Dir, "disk/image") }

func (m *benchMount) close(b *testing.B) {
	if err := m.mnt.Unmount(); err != nil {
		b.Error(err)
	}
	m.fs.Close()
}

func readAllFrom(b *testing.B, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, err := f.Read(buf)
		total += int64(n)
		if err != nil || n == 0 {
			break
		}
	}
	if total != benchImage {
		b.Fatalf("read %d bytes, want %d", total, benchImage)
	}
}

// BenchmarkSequentialFirstTouch reads a whole image front to back with 1 MiB reads.
func BenchmarkSequentialFirstTouch(b *testing.B) {
	path := backing(b)
	b.Run("direct", func(b *testing.B) {
		b.SetBytes(benchImage)
		for range b.N {
			b.StopTimer()
			dropCache(b, path)
			b.StartTimer()
			readAllFrom(b, path)
		}
	})
	b.Run("cloudletfs", func(b *testing.B) {
		b.SetBytes(benchImage)
		for range b.N {
			b.StopTimer()
			dropCache(b, path)
			m := mountImage(b, path, nil, cloudletfs.MountOptions{})
			b.StartTimer()
			readAllFrom(b, m.path())
			b.StopTimer()
			m.close(b)
			b.StartTimer()
		}
	})
	b.Run("cloudletfs-readahead-512K", func(b *testing.B) {
		b.SetBytes(benchImage)
		for range b.N {
			b.StopTimer()
			dropCache(b, path)
			m := mountImage(b, path, nil, cloudletfs.MountOptions{ReadAheadKB: 512})
			b.StartTimer()
			readAllFrom(b, m.path())
			b.StopTimer()
			m.close(b)
			b.StartTimer()
		}
	})
}

// random4K times single 4 KiB reads at random chunks, none read before in the pass. Readahead
// is off (POSIX_FADV_RANDOM) so that each read is one fault.
func random4K(b *testing.B, open func() (path string, done func())) {
	rng := rand.New(rand.NewSource(2))
	chunks := int64(benchImage / chunk.Size)
	var lat []time.Duration
	buf := make([]byte, chunk.Size)
	for done := 0; done < b.N; {
		b.StopTimer()
		path, finish := open()
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM)
		order := rng.Perm(int(chunks))
		b.StartTimer()
		for _, c := range order[:min(len(order), b.N-done)] {
			t0 := time.Now()
			if _, err := f.ReadAt(buf, int64(c)*chunk.Size); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
			done++
		}
		b.StopTimer()
		f.Close()
		finish()
		b.StartTimer()
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// BenchmarkRandom4KFirstTouch: the latency of a random first-touch 4 KiB read.
func BenchmarkRandom4KFirstTouch(b *testing.B) {
	path := backing(b)
	b.Run("direct", func(b *testing.B) {
		random4K(b, func() (string, func()) {
			dropCache(b, path)
			return path, func() {}
		})
	})
	b.Run("cloudletfs", func(b *testing.B) {
		random4K(b, func() (string, func()) {
			dropCache(b, path)
			m := mountImage(b, path, nil, cloudletfs.MountOptions{MaxReadAhead: chunk.Size})
			return m.path(), func() { m.close(b) }
		})
	})
	// The backing file hot in the page cache: what the FUSE round trip itself costs.
	b.Run("cloudletfs-backing-hot", func(b *testing.B) {
		random4K(b, func() (string, func()) {
			readAllFrom(b, path)
			m := mountImage(b, path, nil, cloudletfs.MountOptions{MaxReadAhead: chunk.Size})
			return m.path(), func() { m.close(b) }
		})
	})
}

// BenchmarkDemandMiss: a random 4 KiB read of a pending chunk, supplied by an in-memory
// source: FUSE request, demand, delivery into the cache file, wake-up, reply.
func BenchmarkDemandMiss(b *testing.B) {
	path := backing(b)
	plan := make([]cloudletfs.State, benchImage/chunk.Size)
	for i := range plan {
		plan[i] = cloudletfs.StatePending
	}
	// The floor: a zero chunk is answered without any file I/O, so this is one FUSE round trip.
	zeros := make([]cloudletfs.State, len(plan))
	for i := range zeros {
		zeros[i] = cloudletfs.StateZero
	}
	b.Run("cloudletfs-zero-chunk", func(b *testing.B) {
		random4K(b, func() (string, func()) {
			m := mountImage(b, path, zeros, cloudletfs.MountOptions{MaxReadAhead: chunk.Size})
			return m.path(), func() { m.close(b) }
		})
	})
	b.Run("cloudletfs-base-chunk", func(b *testing.B) {
		random4K(b, func() (string, func()) {
			readAllFrom(b, path)
			m := mountImage(b, path, nil, cloudletfs.MountOptions{MaxReadAhead: chunk.Size})
			return m.path(), func() { m.close(b) }
		})
	})
	b.Run("cloudletfs-pending-chunk", func(b *testing.B) {
		random4K(b, func() (string, func()) {
			readAllFrom(b, path)
			m := mountImage(b, path, plan, cloudletfs.MountOptions{MaxReadAhead: chunk.Size})
			return m.path(), func() { m.close(b) }
		})
	})
}
