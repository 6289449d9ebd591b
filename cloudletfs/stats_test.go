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
	fsys := f.open(t)
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

// TestStatsTouchedMissed: overlay_touched counts the overlay's chunks (pending in the plan,
// whether or not a reused cache holds them) that the VM read or wrote, once each;
// overlay_missed those of them that were not local at their first touch.
func TestStatsTouchedMissed(t *testing.T) {
	f := newFixture(t, t.TempDir(), 37) // chunk i: base (i%4==0), zero (1), overlay (2, 3)
	cache := t.TempDir()
	open := func() (*cloudletfs.FS, *cloudletfs.Image) {
		src := &cloudletfs.MemSource{Data: f.want}
		fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: cache, Images: f.configs, Demander: src, Identity: "fixture"})
		if err != nil {
			t.Fatal(err)
		}
		src.Attach(fsys)
		return fsys, fsys.Image("memory")
	}
	fsys, img := open()
	read := func(first, n int64) func() error {
		return func() error {
			_, err := img.ReadAt(t.Context(), make([]byte, n*chunk.Size), first*chunk.Size)
			return err
		}
	}
	write := func(c, n int64) func() error {
		return func() error { _, err := img.WriteAt(t.Context(), make([]byte, n), c*chunk.Size); return err }
	}
	steps := []struct {
		what           string
		do             func() error
		touched, missd int64
	}{
		{"deliver 2", func() error { return fsys.Deliver("memory", 2, f.want["memory"][2*chunk.Size:3*chunk.Size]) }, 0, 0},
		{"read 2 (local)", read(2, 1), 1, 0},
		{"read 2 again", read(2, 1), 1, 0},
		{"read 0 (base) and 1 (zero)", read(0, 2), 1, 0},
		{"read 3 (pending)", read(3, 1), 2, 1},
		{"write all of 6 (pending: no wait)", write(6, chunk.Size), 3, 1},
		{"write part of 7 (pending: waits)", write(7, 10), 4, 2},
		{"read 8-11 (base, zero, pending, pending)", read(8, 4), 6, 4},
		{"read 10 again", read(10, 1), 6, 4},
		{"reopen: read 2 (cached)", func() error {
			if err := fsys.Close(); err != nil {
				return err
			}
			fsys, img = open()
			return read(2, 1)()
		}, 1, 0},
		{"read 14 (pending)", read(14, 1), 2, 1},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		st := img.Stats()
		if st.OverlayTouched != s.touched || st.OverlayMissed != s.missd {
			t.Errorf("after %s: overlay touched %d, missed %d; want %d, %d", s.what, st.OverlayTouched, st.OverlayMissed, s.touched, s.missd)
		}
	}
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
}
