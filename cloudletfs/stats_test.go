package cloudletfs_test

import (
	"bytes"
	"testing"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
)

// TestStatsPresent: chunks_present counts chunks whose bytes are in the cache, once each,
// however often they are delivered or written; chunks_pending those still to come.
func TestStatsPresent(t *testing.T) {
	f := newFixture(t, t.TempDir(), 31)
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: t.TempDir(), Images: f.configs, Identity: "fixture"})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	img := fsys.Image("memory")
	data := bytes.Repeat([]byte{7}, chunk.Size)
	pending := int64(64) // chunks 2 and 3 of every 4
	if got := img.Stats().ChunksPending; got != pending {
		t.Fatalf("chunks_pending %d at open, want %d", got, pending)
	}
	steps := []struct {
		what        string
		do          func() error
		want        int64
		wantPending int64
	}{
		{"deliver 2", func() error { return fsys.Deliver("memory", 2, data) }, 1, pending - 1},
		{"deliver 2 again", func() error { return fsys.Deliver("memory", 2, data) }, 1, pending - 1},
		{"write 2 (present)", func() error { _, err := img.WriteAt(t.Context(), data, 2*chunk.Size); return err }, 1, pending - 1},
		{"write 2 again (modified)", func() error { _, err := img.WriteAt(t.Context(), data[:10], 2*chunk.Size); return err }, 1, pending - 1},
		{"write 0 (base)", func() error { _, err := img.WriteAt(t.Context(), data[:10], 0); return err }, 2, pending - 1},
		{"write 0 again", func() error { _, err := img.WriteAt(t.Context(), data, 0); return err }, 2, pending - 1},
		{"write 3 whole (pending)", func() error { _, err := img.WriteAt(t.Context(), data, 3*chunk.Size); return err }, 3, pending - 2},
		{"deliver 3 (overwritten)", func() error { return fsys.Deliver("memory", 3, data) }, 3, pending - 2},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		if got := img.Stats().ChunksPresent; got != s.want {
			t.Errorf("after %s: chunks_present %d, want %d", s.what, got, s.want)
		}
		if got := img.Stats().ChunksPending; got != s.wantPending {
			t.Errorf("after %s: chunks_pending %d, want %d", s.what, got, s.wantPending)
		}
	}
}
