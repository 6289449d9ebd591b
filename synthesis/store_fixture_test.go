package synthesis

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// appBase is a base of two images of seeded bytes, on disk, from which test overlays are made
// the way capture makes them: each overlay is the base with some chunks changed.
type appBase struct {
	dir    string
	id     [32]byte
	images []overlay.Image
	data   [][]byte // per image
}

func newAppBase(t testing.TB) *appBase {
	t.Helper()
	b := &appBase{dir: t.TempDir(), images: []overlay.Image{
		{Name: "disk", Size: 4096*chunk.Size + 512}, {Name: "memory", Size: 2048 * chunk.Size}}}
	rng := rand.New(rand.NewSource(1))
	rng.Read(b.id[:])
	for _, im := range b.images {
		d := make([]byte, im.Size)
		rng.Read(d)
		if err := os.WriteFile(filepath.Join(b.dir, im.Name), d, 0o600); err != nil {
			t.Fatal(err)
		}
		b.data = append(b.data, d)
	}
	return b
}

// change is a run of chunks of one image given new bytes (seeded by seed and the chunk),
// half random and half zero, as compressible as a real app's.
type change struct {
	image        uint8
	first, n     int64
	seed         int64
	toWorkingSet bool
}

// appOverlay is an overlay made of changes, in a file, and the images it makes.
type appOverlay struct {
	path string
	id   string
	size int64
	want [][]byte
}

// overlay writes the overlay of the changes. A change's chunks are stored (blob kind) and
// listed in the prefetch order in the order of the changes; each change's last chunk but one
// is a copy of its first (a self reference), and the chunk after it is zeroed.
func (b *appBase) overlay(t testing.TB, changes ...change) appOverlay {
	t.Helper()
	want := [][]byte{bytes.Clone(b.data[0]), bytes.Clone(b.data[1])}
	at := func(im uint8, i int64) []byte {
		return want[im][i*chunk.Size : min((i+1)*chunk.Size, int64(len(want[im])))]
	}
	var entries []overlay.Entry
	var order []int
	ws := 0
	for _, ch := range changes {
		for i := ch.first; i < ch.first+ch.n; i++ {
			dst := at(ch.image, i)
			e := overlay.Entry{Image: ch.image, Index: i, Kind: overlay.KindBlob}
			if i == ch.first+ch.n-2 && len(dst) == chunk.Size {
				copy(dst, at(ch.image, ch.first))
				e.Kind, e.SameImage, e.SameIndex = overlay.KindSelf, ch.image, ch.first
			} else {
				rand.New(rand.NewSource(ch.seed*1e9 + int64(ch.image)*1e7 + i)).Read(dst[:len(dst)/2])
				clear(dst[len(dst)/2:])
				order = append(order, len(entries))
				if ch.toWorkingSet {
					ws++
				}
			}
			e.Digest = chunk.Sum(dst)
			entries = append(entries, e)
		}
		if z := ch.first + ch.n; z < chunk.Count(b.images[ch.image].Size) {
			clear(at(ch.image, z))
			entries = append(entries, overlay.Entry{Image: ch.image, Index: z, Kind: overlay.KindZero})
		}
	}
	path := filepath.Join(t.TempDir(), "app.overlay")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum, err := overlay.Write(context.Background(), f, t.TempDir(), overlay.Meta{
		BaseID: b.id, Images: b.images, Config: []byte(`{}`), Codec: overlay.CodecZstd,
		BlobRaw: 64 * chunk.Size, WorkingSet: ws,
	}, []byte("device state"), entries, order, func(im uint8, i int64) ([]byte, error) {
		return at(im, i), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return appOverlay{path: path, id: sum.ID, size: sum.Size, want: want}
}

// fetchResult is what one fetch of an overlay into a fresh cache did.
type fetchResult struct {
	fetched, prefix int64 // bytes read from the origin; of them, the index read
	stats           FetchStats
}

// fetch runs a fetcher over the overlay into a fresh cloudletfs cache (no mount: the fetcher
// delivers through FS.Deliver), waits for it to complete, and checks every byte of the images.
// started, if given, runs once the fetcher has started.
func (b *appBase) fetch(t testing.TB, ov appOverlay, store ChunkStore, started ...func(*cloudletfs.FS)) fetchResult {
	t.Helper()
	return b.fetchInto(t, ov, store, t.TempDir(), started...)
}

// fetchInto is fetch into the cache directory dir, which may be kept from an earlier fetch.
func (b *appBase) fetchInto(t testing.TB, ov appOverlay, store ChunkStore, dir string, started ...func(*cloudletfs.FS)) fetchResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	src, err := origin.Open(ctx, ov.path, origin.HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A window that prefetches nothing: it only counts what the origin delivers.
	w := newWindow(ctx, src, func(overlay.Plan) int64 { return 0 })
	defer w.Close()
	r, err := overlay.Open(w.readerAt(), w.Size(), overlay.Expect{BaseID: hex.EncodeToString(b.id[:]), Images: b.images})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	afterIndex := w.BytesRead()
	var baseImgs []io.ReaderAt
	cfg := cloudletfs.Config{Dir: dir, Identity: "test " + r.ID()}
	plans := Plans(r.Index)
	for i, im := range b.images {
		f, err := os.Open(filepath.Join(b.dir, im.Name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		baseImgs = append(baseImgs, f)
		cfg.Images = append(cfg.Images, cloudletfs.ImageConfig{Name: im.Name, Size: im.Size, Base: f.Name(), Plan: plans[i]})
	}
	f := NewFetcher(r, w, baseImgs, FetchOptions{Store: store})
	cfg.Demander = f
	fsys, err := cloudletfs.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	f.Start(ctx, fsys)
	defer f.Close()
	for _, fn := range started {
		fn(fsys)
	}
	select {
	case <-f.Complete():
	case <-f.Failed():
		t.Fatalf("fetch failed: %v", f.Err())
	case <-ctx.Done():
		t.Fatal("fetch did not complete within a minute")
	}
	for i, im := range b.images {
		got := make([]byte, im.Size)
		if _, err := fsys.Image(im.Name).ReadAt(ctx, got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, ov.want[i]) {
			t.Fatalf("image %s differs from the overlay's", im.Name)
		}
	}
	// What the fetch read, and the first read of the index (the rest of it is not counted).
	return fetchResult{fetched: r.PrefixLen() + w.BytesRead() - afterIndex, prefix: r.PrefixLen(), stats: f.Stats()}
}
