package overlay_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cloudlet/cloudlet/overlay"
)

// TestReorder: a rewritten overlay puts the named stored chunks first, in the order named
// (a self reference standing for the chunk it repeats; other places skipped, repeats once),
// puts the rest in place order, counts the working set, applies to the same images, and is a
// private file.
func TestReorder(t *testing.T) {
	tc := newCase(t, overlay.CodecZstd, 3)
	r, err := overlay.Open(bytes.NewReader(tc.file), int64(len(tc.file)), tc.expect())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ix := r.Index
	placeOf := func(ix *overlay.Index, e int) overlay.Place {
		c := ix.Chunks[e]
		return overlay.Place{Image: ix.Images[c.Image].Name, Index: c.Index}
	}
	last, prev := int(ix.Prefetch[len(ix.Prefetch)-1]), int(ix.Prefetch[len(ix.Prefetch)-2])
	self, zero := -1, -1
	for e, c := range ix.Chunks {
		switch {
		case c.Kind == overlay.KindSelf && self < 0 && int(c.Self) != last && int(c.Self) != prev:
			self = e
		case c.Kind == overlay.KindZero && zero < 0:
			zero = e
		}
	}
	if self < 0 || zero < 0 {
		t.Fatal("the test overlay has no self reference or no zero chunk to name")
	}
	first := []overlay.Place{placeOf(ix, last), placeOf(ix, self), placeOf(ix, zero),
		{Image: "nope", Index: 0}, placeOf(ix, last), placeOf(ix, prev)}
	want := []overlay.Place{placeOf(ix, last), placeOf(ix, int(ix.Chunks[self].Self)), placeOf(ix, prev)}
	var rest []overlay.Place // the other stored chunks, in place order
	for e, c := range ix.Chunks {
		if pl := placeOf(ix, e); c.Kind == overlay.KindBlob && !slices.Contains(want, pl) {
			rest = append(rest, pl)
		}
	}

	path := filepath.Join(t.TempDir(), "reordered.overlay")
	ws, err := overlay.Reorder(context.Background(), r, first, path, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if ws != len(want) {
		t.Errorf("working set: got %d chunks, want %d", ws, len(want))
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode: got %v, want 0600", fi.Mode().Perm())
	}
	nr, err := overlay.Open(bytes.NewReader(file), int64(len(file)), tc.expect())
	if err != nil {
		t.Fatal(err)
	}
	defer nr.Close()
	var got []overlay.Place
	for _, p := range nr.Index.Prefetch {
		got = append(got, placeOf(nr.Index, int(p)))
	}
	if wantAll := append(slices.Clone(want), rest...); !slices.Equal(got, wantAll) {
		t.Errorf("prefetch order:\n got %v\nwant %v", got, wantAll)
	}
	if nr.Index.WorkingSetBlobs == 0 {
		t.Error("the rewritten overlay counts no working-set blobs")
	}
	images, err := tc.apply(file)
	if err != nil {
		t.Fatal(err)
	}
	for i := range images {
		if !bytes.Equal(images[i], tc.want[i]) {
			t.Errorf("%s differs after applying the rewritten overlay", nr.Index.Images[i].Name)
		}
	}
}
