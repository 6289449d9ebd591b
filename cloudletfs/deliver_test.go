package cloudletfs_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
)

// TestDeliverRun: a delivery of several chunks stores the pending ones among them and leaves
// every other chunk as it was: base, zero, and one the VM wrote before the delivery came.
func TestDeliverRun(t *testing.T) {
	f := newFixture(t, t.TempDir(), 41) // chunk i: base (i%4==0), zero (1), overlay (2, 3)
	fsys := f.open(t)
	img := fsys.Image("disk")
	want := bytes.Clone(f.want["disk"])
	vmWrite := bytes.Repeat([]byte{0x5a}, chunk.Size)
	if _, err := img.WriteAt(t.Context(), vmWrite, 3*chunk.Size); err != nil {
		t.Fatal(err)
	}
	copy(want[3*chunk.Size:], vmWrite)

	// What the fetcher hands over is the overlay's bytes for every chunk of the run: bytes
	// that must not land on a chunk that is not pending. Mark those so a wrong write shows.
	run := func(first, last int64) []byte {
		b := bytes.Clone(f.want["disk"][first*chunk.Size : min((last+1)*chunk.Size, img.Size())])
		for c := first; c <= last; c++ {
			if c%4 < 2 || c == 3 {
				b[(c-first)*chunk.Size] ^= 0xff
			}
		}
		return b
	}
	for _, r := range [][2]int64{{0, 7}, {6, 11}, {94, 96}} { // 6, 7 twice; 96 is short
		if err := fsys.Deliver("disk", r[0], run(r[0], r[1])); err != nil {
			t.Fatalf("deliver chunks %d-%d: %v", r[0], r[1], err)
		}
	}
	// Pending before, and in a run: 2, 6, 7, 10, 11, 94, 95 (3 was written by the VM).
	if got, wantN := img.Stats().ChunksFetched, int64(7); got != wantN {
		t.Errorf("chunks fetched %d, want %d", got, wantN)
	}
	for c := range int64(97) {
		s := img.State(c)
		delivered := c%4 >= 2 && c != 3 && (c <= 11 || c >= 94)
		if delivered && s != cloudletfs.StatePresent || c%4 >= 2 && c != 3 && !delivered && s != cloudletfs.StatePending {
			t.Errorf("chunk %d is %v after the deliveries", c, s)
		}
	}
	got := make([]byte, 12*chunk.Size)
	if _, err := img.ReadAt(t.Context(), got, 0); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, want[:len(got)]); i >= 0 {
		t.Errorf("chunk %d reads other bytes than the model after the deliveries", i/chunk.Size)
	}
	tail := make([]byte, img.Size()-94*chunk.Size)
	if _, err := img.ReadAt(t.Context(), tail, 94*chunk.Size); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(tail, want[94*chunk.Size:]); i >= 0 {
		t.Errorf("chunk %d reads other bytes than the model after the deliveries", 94+i/chunk.Size)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestDeliverRefusesPartialChunks: a delivery names whole chunks of the image, or nothing is
// stored.
func TestDeliverRefusesPartialChunks(t *testing.T) {
	f := newFixture(t, t.TempDir(), 43)
	fsys := f.open(t)
	last := int64(96) // the disk's short last chunk: 1000 bytes
	cases := []struct {
		name  string
		first int64
		n     int
		want  string
	}{
		{"negative chunk", -1, chunk.Size, "out of range"},
		{"past the end", last + 1, chunk.Size, "out of range"},
		{"nothing", 2, 0, "not whole chunks"},
		{"part of a chunk", 2, chunk.Size - 1, "not whole chunks"},
		{"a chunk and a bit", 2, chunk.Size + 1, "not whole chunks"},
		{"a whole chunk over the short last one", last, chunk.Size, "not whole chunks"},
		{"a run past the end", last - 1, 2 * chunk.Size, "not whole chunks"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := fsys.Deliver("disk", tc.first, make([]byte, tc.n))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
	if got := fsys.Image("disk").Stats().ChunksFetched; got != 0 {
		t.Errorf("%d chunks fetched by refused deliveries", got)
	}
}
