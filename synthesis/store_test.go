package synthesis

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/chunkstore"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
)

// v1 is an app: memory and disk chunks changed, part of them in the working set. v2 is the
// same app with one more file of 2 MiB on the disk, written between the two.
var (
	appV1 = []change{
		{image: 1, first: 10, n: 600, seed: 1, toWorkingSet: true},
		{image: 0, first: 100, n: 300, seed: 1},
	}
	appFile = change{image: 0, first: 2000, n: 512, seed: 2}
	appV2   = []change{appV1[0], appFile, appV1[1]}
)

// TestStoreSecondFetch: with a shared store, a second fetch of an overlay into a fresh cache
// fetches nothing but the index read, and the next version of the app fetches about the size
// of its change. Every byte of the images is checked after each fetch.
func TestStoreSecondFetch(t *testing.T) {
	b := newAppBase(t)
	v1, v2 := b.overlay(t, appV1...), b.overlay(t, appV2...)
	growth := v2.size - v1.size
	open := func(t *testing.T) *chunkstore.Store {
		s, err := chunkstore.Open(t.TempDir(), 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	flush := func(t *testing.T, s *chunkstore.Store) {
		if err := s.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("same overlay", func(t *testing.T) {
		s := open(t)
		until := prefetchUntil(t.TempDir(), s)
		plan := overlay.Plan{ID: v1.id, IndexEnd: 1000, ResumeEnd: 100000}
		if got := until(plan); got != plan.ResumeEnd {
			t.Fatalf("before any fetch, the index read goes to %d, want the resume end %d", got, plan.ResumeEnd)
		}
		first := b.fetch(t, v1, s)
		flush(t, s)
		// The store holds the whole overlay now: a synthesis reads only the index first.
		if got := until(plan); got != plan.IndexEnd {
			t.Fatalf("with the overlay in the store, the index read goes to %d, want the index end %d", got, plan.IndexEnd)
		}
		second := b.fetch(t, v1, s)
		t.Logf("overlay %d bytes; first fetch %d bytes, second %d (of them %d the index read), %d bytes from the store",
			v1.size, first.fetched, second.fetched, second.prefix, second.stats.FromStoreBytes)
		if first.stats.FromStoreBytes != 0 {
			t.Fatalf("first fetch took %d bytes from an empty store", first.stats.FromStoreBytes)
		}
		if beyond := second.fetched - second.prefix; beyond > v1.size/100 {
			t.Fatalf("second fetch read %d bytes beyond the index read, want at most 1%% of %d", beyond, v1.size)
		}
		if second.stats.Requests != 0 {
			t.Fatalf("second fetch made %d range requests, want none", second.stats.Requests)
		}
	})
	t.Run("next version", func(t *testing.T) {
		s := open(t)
		b.fetch(t, v1, s)
		flush(t, s)
		got := b.fetch(t, v2, s)
		beyond := got.fetched - got.prefix
		t.Logf("v1 %d bytes, v2 %d bytes (%d more); v2 with v1's chunks in the store fetched %d bytes beyond the index read, %d in all, %d from the store",
			v1.size, v2.size, growth, beyond, got.fetched, got.stats.FromStoreBytes)
		// The file's chunks share at most a blob at each end with chunks the store has.
		if beyond < growth*8/10 || beyond > growth*13/10 {
			t.Fatalf("fetched %d bytes beyond the index read, want about the %d bytes the overlay grew", beyond, growth)
		}
	})
}

// lyingStore answers every Get with bytes that are not the chunk asked for, and says it has it.
type lyingStore struct {
	mu   sync.Mutex
	gets int
}

func (s *lyingStore) Get(d chunk.Digest, p []byte) (int, bool) {
	s.mu.Lock()
	s.gets++
	s.mu.Unlock()
	for i := range chunk.Size {
		p[i] = byte(i)
	}
	return chunk.Size, true
}

func (s *lyingStore) Put(chunk.Digest, []byte)      {}
func (s *lyingStore) Tag(string, time.Time, []byte) {}
func (s *lyingStore) Tagged(string) bool            { return true }

// TagData claims the store rebuilds the overlay's first 1 MiB (index and device state); the
// bytes it returns are wrong.
func (s *lyingStore) TagData(string) ([]byte, bool) {
	const n = 1 << 20
	return append(binary.LittleEndian.AppendUint64(nil, n), make([]byte, n/chunk.Size*32)...), true
}

// TestStoreLies: a store that returns wrong bytes is never believed: every blob is fetched
// from the origin and the images are right (fetch checks every byte).
func TestStoreLies(t *testing.T) {
	b := newAppBase(t)
	v1 := b.overlay(t, appV1...)
	s := &lyingStore{}
	got := b.fetch(t, v1, s)
	if s.gets == 0 {
		t.Fatal("the store was never asked")
	}
	if got.stats.FromStoreBytes != 0 || got.fetched < v1.size*9/10 {
		t.Fatalf("%d bytes from a lying store, %d of %d fetched; want none, and the whole overlay",
			got.stats.FromStoreBytes, got.fetched, v1.size)
	}
}

// slowStore takes a while for each Get, as a busy disk does.
type slowStore struct {
	ChunkStore
	delay time.Duration
}

func (s slowStore) Get(d chunk.Digest, p []byte) (int, bool) {
	time.Sleep(s.delay)
	return s.ChunkStore.Get(d, p)
}

// TestStoreDemandFirst: while the store pass walks the blobs in prefetch order, a guest read
// of a chunk in the last blob is served from the store ahead of the order, not after the
// pass, and not from the origin.
func TestStoreDemandFirst(t *testing.T) {
	b := newAppBase(t)
	v1 := b.overlay(t, appV1...)
	s, err := chunkstore.Open(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b.fetch(t, v1, s)
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	const delay = 2 * time.Millisecond // about 900 chunks: the whole pass takes about 2 s
	var waited time.Duration
	got := b.fetch(t, v1, slowStore{s, delay}, func(fsys *cloudletfs.FS) {
		// The last chunk of the disk change is in the last blob (prefetch order: memory first).
		c := appV1[1].first + appV1[1].n - 1
		start := time.Now()
		p := make([]byte, chunk.Size)
		if _, err := fsys.Image("disk").ReadAt(context.Background(), p, c*chunk.Size); err != nil {
			t.Error(err)
		}
		waited = time.Since(start)
	})
	t.Logf("the read waited %v; whole pass %.2f s", waited, got.stats.StoreSec)
	if got.stats.Requests != 0 {
		t.Fatalf("%d range requests, want none: the store has every chunk", got.stats.Requests)
	}
	if waited > time.Duration(got.stats.StoreSec*float64(time.Second))/2 {
		t.Fatalf("the read waited %v, more than half the store pass (%.2f s): it was not served first", waited, got.stats.StoreSec)
	}
}

// TestStoreTagsWholeOverlays: a fetch that took every blob from the store or put it there tags
// the overlay as held; one into a kept cache that had blobs already (neither read from the
// store nor put there) does not, since the store may lack them.
func TestStoreTagsWholeOverlays(t *testing.T) {
	b := newAppBase(t)
	v1 := b.overlay(t, appV1...)
	tests := []struct {
		name string
		kept bool // the cache holds the overlay already, from a fetch without the store
		want bool
	}{{"fresh cache", false, true}, {"kept cache", true, false}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := chunkstore.Open(t.TempDir(), 1<<30)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			dir := t.TempDir()
			if tt.kept {
				b.fetchInto(t, v1, nil, dir)
			}
			b.fetchInto(t, v1, s, dir)
			if err := s.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := s.Tagged(v1.id); got != tt.want {
				t.Fatalf("overlay tagged as held: %v, want %v", got, tt.want)
			}
		})
	}
}
