package cloudletfs_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
)

// TestVerifyOnReopen: a cache whose present chunks were changed on disk behind cloudletfs's
// back is checked when it is opened again. A changed chunk is pending again: a read of it
// waits for a fetch through the Demander and gets the overlay's bytes, and the log names the
// image and the chunk. Untouched present chunks are served without a fetch.
func TestVerifyOnReopen(t *testing.T) {
	f := newFixture(t, t.TempDir(), 21)
	delivered := []int64{2, 3, 6, 7, 127}
	tests := []struct {
		name    string
		corrupt map[int64]func(b []byte) // chunk -> change to its cached bytes
	}{
		{"one bit", map[int64]func([]byte){3: func(b []byte) { b[100] ^= 1 }}},
		{"zeroed", map[int64]func([]byte){6: func(b []byte) { clear(b) }}},
		{"swapped", map[int64]func([]byte){2: func(b []byte) { copy(b, f.want["memory"][7*chunk.Size:8*chunk.Size]) }}},
		{"several, last chunk", map[int64]func([]byte){3: func(b []byte) { b[0]++ }, 127: func(b []byte) { b[chunk.Size-1]++ }}},
		{"none", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := t.TempDir()
			deliverAndClose(t, f, cache, delivered)
			corruptCache(t, filepath.Join(cache, "memory.cache"), tt.corrupt)

			var logged bytes.Buffer
			src := &cloudletfs.MemSource{Data: f.want, Hold: true}
			fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: cache, Images: f.verified(), Demander: src,
				Identity: "fixture", Log: log.New(&logged, "", 0)})
			if err != nil {
				t.Fatal(err)
			}
			defer fsys.Close()
			src.Attach(fsys)
			img := fsys.Image("memory")
			for _, c := range delivered {
				want := cloudletfs.StatePresent
				if tt.corrupt[c] != nil {
					want = cloudletfs.StatePending
				}
				if s := img.State(c); s != want {
					t.Errorf("chunk %d after reopening: %v, want %v", c, s, want)
				}
			}
			for c := range tt.corrupt {
				if !strings.Contains(logged.String(), fmt.Sprintf("image memory: cached chunk %d has digest", c)) {
					t.Errorf("log does not name chunk %d: %q", c, logged.String())
				}
			}
			if tt.corrupt == nil && logged.Len() != 0 {
				t.Errorf("log of a sound cache: %q", logged.String())
			}
			readThroughRefetch(t, f, img, src, delivered, tt.corrupt)
		})
	}
}

// readThroughRefetch reads each delivered chunk: a corrupted one waits until the held
// demand is released, then reads the overlay's bytes; a sound one is read at once.
func readThroughRefetch(t *testing.T, f *fixture, img *cloudletfs.Image, src *cloudletfs.MemSource, delivered []int64, corrupt map[int64]func([]byte)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	type result struct {
		c   int64
		b   []byte
		err error
	}
	done := make(chan result, len(delivered))
	for _, c := range delivered {
		go func() {
			b := make([]byte, chunk.Size)
			_, err := img.ReadAt(ctx, b, c*chunk.Size)
			done <- result{c, b, err}
		}()
	}
	// Sound chunks answer without the source; corrupted ones wait for it.
	for range len(delivered) - len(corrupt) {
		r := <-done
		if corrupt[r.c] != nil {
			t.Fatalf("chunk %d was read before its refetch", r.c)
		}
		checkResult(t, f, r.c, r.b, r.err)
	}
	eventually(t, 5*time.Second, "demands of the corrupted chunks", func() bool { return src.TotalDemands() == len(corrupt) })
	src.Release()
	for range len(corrupt) {
		r := <-done
		checkResult(t, f, r.c, r.b, r.err)
	}
	for c := range corrupt {
		if n := src.Demands("memory", c); n != 1 {
			t.Errorf("chunk %d demanded %d times, want 1", c, n)
		}
	}
}

func checkResult(t *testing.T, f *fixture, c int64, got []byte, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("read chunk %d: %v", c, err)
	}
	lo := c * chunk.Size
	checkBytes(t, fmt.Sprintf("chunk %d", c), got, f.want["memory"][lo:lo+chunk.Size], lo)
}

// deliverAndClose delivers memory chunks into a new cache and closes it.
func deliverAndClose(t *testing.T, f *fixture, cache string, chunks []int64) {
	t.Helper()
	src := &cloudletfs.MemSource{Data: f.want}
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: cache, Images: f.verified(), Demander: src, Identity: "fixture"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if err := fsys.Deliver("memory", c, src.Chunk("memory", c)); err != nil {
			t.Fatal(err)
		}
	}
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
}

// corruptCache changes chunks of a cache file in place, as a disk error or another program
// would.
func corruptCache(t *testing.T, path string, corrupt map[int64]func([]byte)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for c, change := range corrupt {
		change(b[c*chunk.Size : (c+1)*chunk.Size])
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
