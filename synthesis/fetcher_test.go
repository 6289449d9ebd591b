package synthesis

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/chunkstore"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// testOverlay writes an overlay over b that changes the first n chunks of its memory to random
// (incompressible) bytes, in chunk order, the first ws of them recorded as the working set.
func testOverlay(t testing.TB, b *base.Base, n, ws int) string {
	t.Helper()
	return testOverlayBlobs(t, b, n, ws, 0)
}

// testOverlayBlobs is testOverlay with the raw size of the blobs after the working set (0: the
// writer's default).
func testOverlayBlobs(t testing.TB, b *base.Base, n, ws, restBlobRaw int) string {
	t.Helper()
	rng := rand.New(rand.NewSource(int64(n)))
	data := make([][]byte, n)
	entries := make([]overlay.Entry, n)
	order := make([]int, n)
	for i := range n {
		data[i] = make([]byte, chunk.Size)
		rng.Read(data[i])
		entries[i] = overlay.Entry{Image: 1, Index: int64(i), Kind: overlay.KindBlob, Digest: chunk.Sum(data[i])}
		order[i] = i
	}
	m := testMeta(t, b, ws)
	m.RestBlobRaw = restBlobRaw
	path := filepath.Join(t.TempDir(), "test.overlay")
	_, err := overlay.WriteFile(context.Background(), path, t.TempDir(), m, []byte("devstate"), entries, order,
		func(image uint8, index int64) ([]byte, error) { return data[index], nil })
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// testMeta is the Meta of a zstd overlay over b whose first ws prefetch entries are the
// working set.
func testMeta(t testing.TB, b *base.Base, ws int) overlay.Meta {
	t.Helper()
	var id [32]byte
	if _, err := hex.Decode(id[:], []byte(b.ID)); err != nil {
		t.Fatal(err)
	}
	cfg, err := json.Marshal(b.Manifest.VM)
	if err != nil {
		t.Fatal(err)
	}
	return overlay.Meta{BaseID: id, Images: ExpectFor(b).Images, Config: cfg, Codec: overlay.CodecZstd, WorkingSet: ws}
}

// startFetch runs a session's fetch, as a synthesis does but with no mount and no VM, into a
// fresh cache; it returns the cache's memory image.
func startFetch(t *testing.T, ctx context.Context, b *base.Base, src string, o Options) (*runner, *cloudletfs.Image) {
	t.Helper()
	return startFetchOver(t, ctx, b, src, o, nil)
}

// startFetchOver is startFetch with the fetcher reading the base's images through wrap, if
// not nil.
func startFetchOver(t *testing.T, ctx context.Context, b *base.Base, src string, o Options, wrap func([]io.ReaderAt) []io.ReaderAt) (*runner, *cloudletfs.Image) {
	t.Helper()
	o.Base, o.Source, o.CacheDir = b, src, t.TempDir()
	r := newRunner(o)
	t.Cleanup(r.close)
	if err := r.openOverlay(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.startFetcher(); err != nil {
		t.Fatal(err)
	}
	if f := r.fetcher; wrap != nil {
		r.fetcher = NewFetcher(f.r, f.origin, wrap(f.base), f.opts)
	}
	fsys, err := cloudletfs.Open(r.cacheConfig())
	if err != nil {
		t.Fatal(err)
	}
	r.fsys = fsys
	r.onClose(func() { fsys.Close() })
	r.fetcher.Start(ctx, fsys)
	r.onClose(r.fetcher.Close)
	return r, fsys.Image("memory")
}

// TestWorkingSetStreams: the working set flows after two requests (the probe, which brings the
// header, and the one the header's resume end asks for), and each blob is delivered as soon as
// its bytes are in, long before the last one arrives.
func TestWorkingSetStreams(t *testing.T) {
	store, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := base.CommitTiny(t, store, "tiny")
	const ws = 1024                   // 4 MiB
	path := testOverlay(t, b, ws, ws) // all of it the working set: no background request
	s := origin.NewShapedServer(mustRead(t, path))
	defer s.Close()
	s.Shape(20*time.Millisecond, 4<<20) // the working set takes about a second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	_, mem := startFetch(t, ctx, b, s.URL(), Options{EarlyStart: true})

	var firstIn, allIn time.Duration
	var requests int64
	for allIn == 0 {
		if time.Since(start) > 30*time.Second {
			t.Fatal("the working set did not arrive within 30 s")
		}
		if firstIn == 0 && mem.State(0) == cloudletfs.StatePresent {
			firstIn = time.Since(start)
		}
		if mem.State(ws-1) == cloudletfs.StatePresent {
			allIn, requests = time.Since(start), s.Requests.Load()
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("first chunk in after %v, the working set after %v, %d requests", firstIn, allIn, requests)
	if requests != 2 {
		t.Errorf("%d requests before the working set was in, want 2 (probe with header, then the resume range)", requests)
	}
	if firstIn == 0 || firstIn > allIn/2 {
		t.Errorf("first blob delivered after %v, the last after %v: want the first in the first half (delivery as bytes arrive)", firstIn, allIn)
	}
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStoredOverlaySecondSynthesis: once the chunk store holds an overlay whole, a synthesis of
// it asks the origin for nothing but the probe's first bytes: the index and device state come
// from the store too, checked by the header the probe brought. A store that lies about them is
// caught by those checks and the origin is asked instead.
func TestStoredOverlaySecondSynthesis(t *testing.T) {
	store, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := base.CommitTiny(t, store, "tiny")
	path := testOverlay(t, b, 2048, 512)
	s := origin.NewShapedServer(mustRead(t, path))
	defer s.Close()
	chunks, err := chunkstore.Open(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	defer chunks.Close()
	fetch := func(cs ChunkStore) int64 {
		t.Helper()
		n, _ := fetchStored(t, b, s, chunks, cs)
		return n
	}
	size := int64(len(mustRead(t, path)))
	first := fetch(chunks)
	second, requests := fetchStored(t, b, s, chunks, chunks)
	t.Logf("overlay %d bytes: first synthesis fetched %d, second %d in %d requests", size, first, second, requests)
	if second > size/100 || requests != 1 {
		t.Errorf("second synthesis fetched %d bytes in %d requests, want at most 1%% of %d in one (the probe)", second, requests, size)
	}
	if lied := fetch(&lyingStore{}); lied < size {
		t.Errorf("with a lying store, %d bytes fetched, want the whole overlay (%d) from the origin", lied, size)
	}
}

// TestOutsideProfile: the chunks the VM waits for are counted as the profile's misses only
// when the working set does not hold them.
func TestOutsideProfile(t *testing.T) {
	store, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := base.CommitTiny(t, store, "tiny")
	path := testOverlay(t, b, 64, 16) // chunks 0-15 are the working set
	for _, tc := range []struct {
		name   string
		chunks []int64
		want   int64
	}{
		{"in the working set", []int64{0, 15}, 0},
		{"after it", []int64{16, 40, 63}, 3},
		{"both", []int64{3, 50}, 1},
		{"not the overlay's", []int64{1000}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r, _ := startFetch(t, ctx, b, path, Options{EarlyStart: true})
			for _, c := range tc.chunks {
				r.fetcher.Demand("memory", c, cloudletfs.PriorityDemand)
			}
			if got := r.fetcher.Stats().OutsideProfile; got != tc.want {
				t.Fatalf("outside the profile: got %d, want %d", got, tc.want)
			}
		})
	}
}
