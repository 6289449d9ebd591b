package synthesis

import (
	"context"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/chunkstore"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// fetchStored runs a synthesis's fetch of the overlay s serves for base b, with the chunk store
// cs (chunks, or chunks seen through a wrapper), until it completes; it flushes chunks and
// returns the bytes the window read from the origin and the requests s answered.
func fetchStored(t *testing.T, b *base.Base, s *origin.ShapedServer, chunks *chunkstore.Store, cs ChunkStore) (bytes, requests int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before := s.Requests.Load()
	r, _ := startFetch(t, ctx, b, s.URL(), Options{EarlyStart: true, Fetch: FetchOptions{Store: cs}})
	select {
	case <-r.fetcher.Complete():
	case <-r.fetcher.Failed():
		t.Fatal(r.fetcher.Err())
	case <-ctx.Done():
		t.Fatal("the fetch did not complete within a minute")
	}
	n := r.window.BytesRead()
	r.close()
	if err := chunks.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	return n, s.Requests.Load() - before
}

// brokenRecipe is a chunk store whose tag data (the recipe of an overlay's index and device
// state) is broken as data says; the rest is the store's.
type brokenRecipe struct {
	*chunkstore.Store
	data []byte
}

func (s brokenRecipe) TagData(string) ([]byte, bool) { return s.data, s.data != nil }

// TestBrokenRecipeRestored: a synthesis of an overlay the store holds whole, but whose recipe
// broke (no recipe, or one whose pieces are gone), reads the index and device state from the
// origin, and stores the recipe again: the next synthesis asks the origin for the probe alone.
func TestBrokenRecipeRestored(t *testing.T) {
	store, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := base.CommitTiny(t, store, "tiny")
	path := testOverlay(t, b, 2048, 512)
	s := origin.NewShapedServer(mustRead(t, path))
	defer s.Close()
	size := int64(len(mustRead(t, path)))
	gone := chunk.Sum([]byte("a piece no store holds"))
	tests := []struct {
		name string
		data []byte // the recipe the synthesis finds
	}{
		{"no recipe", nil},
		{"a piece gone", append([]byte{1, 0, 0, 0, 0, 0, 0, 0}, gone[:]...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chunks, err := chunkstore.Open(t.TempDir(), 1<<30)
			if err != nil {
				t.Fatal(err)
			}
			defer chunks.Close()
			fetchStored(t, b, s, chunks, chunks)
			broken, brokenReqs := fetchStored(t, b, s, chunks, brokenRecipe{chunks, tt.data})
			again, againReqs := fetchStored(t, b, s, chunks, chunks)
			t.Logf("overlay %d bytes: with the recipe broken %d bytes in %d requests, then %d in %d", size, broken, brokenReqs, again, againReqs)
			if brokenReqs < 2 {
				t.Fatalf("with the recipe broken, %d requests, want the index and device state from the origin too", brokenReqs)
			}
			if again > size/100 || againReqs != 1 {
				t.Fatalf("after a synthesis with the recipe broken, the next fetched %d bytes in %d requests, want at most 1%% of %d in one (the probe)", again, againReqs, size)
			}
		})
	}
}
