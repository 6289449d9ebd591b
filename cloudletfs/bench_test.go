package cloudletfs_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
)

// BenchmarkFirstWrite measures a VM's whole-chunk write by what the chunk was before it:
// present (the overlay's bytes, durable: the write first downgrades the record and
// fdatasyncs the presence map), base (copied on write into the cache) and modified (written
// before). Each write goes to a chunk in that state; report present against base.
func BenchmarkFirstWrite(b *testing.B) {
	for _, tt := range []struct {
		name string
		plan cloudletfs.State
		prep func(b *testing.B, fsys *cloudletfs.FS, n int64)
	}{
		{"present", cloudletfs.StatePending, deliverAll},
		{"base", cloudletfs.StateBase, nil},
		{"modified", cloudletfs.StateBase, writeAll},
	} {
		b.Run(tt.name, func(b *testing.B) {
			n := int64(b.N)
			fsys := openPlanned(b, n, tt.plan)
			defer fsys.Close()
			if tt.prep != nil {
				tt.prep(b, fsys, n)
			}
			img := fsys.Image("disk")
			data := bytes.Repeat([]byte{0xaa}, chunk.Size)
			b.SetBytes(chunk.Size)
			b.ResetTimer()
			for c := range n {
				if _, err := img.WriteAt(b.Context(), data, c*chunk.Size); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// openPlanned opens a disk image of n chunks, all in the plan state, over a random base.
func openPlanned(b *testing.B, n int64, plan cloudletfs.State) *cloudletfs.FS {
	dir := b.TempDir()
	base := make([]byte, n*chunk.Size)
	rand.Read(base)
	basePath := dir + "/disk.base"
	if err := os.WriteFile(basePath, base, 0o600); err != nil {
		b.Fatal(err)
	}
	plans := make([]cloudletfs.State, n)
	for i := range plans {
		plans[i] = plan
	}
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: b.TempDir(), Identity: "bench", FlushInterval: time.Hour,
		Images: []cloudletfs.ImageConfig{{Name: "disk", Size: n * chunk.Size, Base: basePath, Plan: plans}}})
	if err != nil {
		b.Fatal(err)
	}
	return fsys
}

// deliverAll delivers every chunk and makes them durable as present.
func deliverAll(b *testing.B, fsys *cloudletfs.FS, n int64) {
	data := make([]byte, chunk.Size)
	for c := range n {
		if err := fsys.Deliver("disk", c, data); err != nil {
			b.Fatal(err)
		}
	}
	if err := fsys.Sync(); err != nil {
		b.Fatal(err)
	}
}

// writeAll writes every chunk once, so each is modified.
func writeAll(b *testing.B, fsys *cloudletfs.FS, n int64) {
	data := make([]byte, chunk.Size)
	for c := range n {
		if _, err := fsys.Image("disk").WriteAt(b.Context(), data, c*chunk.Size); err != nil {
			b.Fatal(err)
		}
	}
	if err := fsys.Sync(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkVerifyAtOpen measures Open of a reused cache whose 256 MiB memory image is all
// present, checked against the overlay's digests, against the same Open trusting the cache.
func BenchmarkVerifyAtOpen(b *testing.B) {
	const size = 256 << 20
	n := int64(size / chunk.Size)
	dir, cache := b.TempDir(), b.TempDir()
	data := make([]byte, size)
	rand.Read(data)
	basePath := dir + "/memory.base"
	if err := os.WriteFile(basePath, make([]byte, size), 0o600); err != nil {
		b.Fatal(err)
	}
	plans := make([]cloudletfs.State, n)
	digests := make([]chunk.Digest, n)
	for c := range n {
		plans[c] = cloudletfs.StatePending
		digests[c] = chunk.Sum(data[c*chunk.Size : (c+1)*chunk.Size])
	}
	cfg := cloudletfs.Config{Dir: cache, Identity: "bench",
		Images: []cloudletfs.ImageConfig{{Name: "memory", Size: size, Base: basePath, Plan: plans}}}
	fsys, err := cloudletfs.Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	for c := range n {
		if err := fsys.Deliver("memory", c, data[c*chunk.Size:(c+1)*chunk.Size]); err != nil {
			b.Fatal(err)
		}
	}
	if err := fsys.Close(); err != nil {
		b.Fatal(err)
	}
	for _, verify := range []bool{false, true} {
		name := "trusted"
		if verify {
			name = "verified"
			cfg.Images[0].Expected = func(c int64) (chunk.Digest, bool) { return digests[c], true }
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				fsys, err := cloudletfs.Open(cfg)
				if err != nil {
					b.Fatal(err)
				}
				if p := fsys.Image("memory").Stats().ChunksPresent; p != n {
					b.Fatalf("%d chunks present after reopening, want %d", p, n)
				}
				if err := fsys.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
