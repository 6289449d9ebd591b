package synthesis

import (
	"context"
	"fmt"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// An overlay served lazily over its base, by a synthesis or by a plain mount: both open and
// check it, and configure its cache, the same way.

// OpenOverlay opens the overlay behind src through a window that streams what a resume needs
// ahead of the reads (see window), reads its index and checks it against b: its base, its
// images and its VM configuration. The window it returns is the origin to fetch from and to
// close (which closes src); on error, src is closed. cacheDir is the cache the overlay is to
// be fetched into: one that is kept may hold the working set already.
func OpenOverlay(ctx context.Context, src origin.Origin, b *base.Base, cacheDir string) (origin.Origin, *overlay.Reader, error) {
	w, r, err := openWindowed(ctx, src, b, cacheDir, nil)
	if err != nil {
		return nil, nil, err
	}
	return w, r, nil
}

func openWindowed(ctx context.Context, src origin.Origin, b *base.Base, cacheDir string, store ChunkStore) (*window, *overlay.Reader, error) {
	w := newWindow(ctx, src, prefetchUntil(cacheDir, store))
	if store != nil {
		w.stored = storedPrefix(store)
	}
	// The chunk digests come after the working set, which the VM need not wait for; the
	// fetcher loads them (see Fetcher.loadDigests).
	r, err := overlay.OpenIndex(w.readerAt(), w.Size(), ExpectFor(b))
	if err != nil && w.fromStore() {
		// The store's index or device state did not check out (its pieces pass their digests,
		// so its recipe was wrong): read them from the origin, as if it had none.
		w = newWindow(ctx, src, prefetchUntil(cacheDir, store))
		r, err = overlay.OpenIndex(w.readerAt(), w.Size(), ExpectFor(b))
	}
	if err == nil {
		err = loadDigestsAtOnce(r, w, cacheDir)
	}
	if err != nil {
		if r != nil {
			r.Close()
		}
		w.Close()
		return nil, nil, fmt.Errorf("%s: %w", w, err)
	}
	if store != nil {
		w.keep(r.DevstateEnd()) // for the store, once the overlay is whole there
	}
	if err := CheckOverlay(r, b); err != nil {
		r.Close()
		w.Close()
		return nil, nil, err
	}
	return w, r, nil
}

// loadDigestsAtOnce loads the chunk digest table before the fetch starts when it is at hand (the
// chunk store kept it with the index) or needed at once: a kept cache's present chunks are
// checked against it when the cache is opened. A stored table that does not check out is left
// for the fetcher to read from the origin.
func loadDigestsAtOnce(r *overlay.Reader, w *window, cacheDir string) error {
	if t := w.storedTable(); t != nil {
		if r.SetDigestTable(t) == nil {
			return nil
		}
	}
	if cloudletfs.Kept(cacheDir) {
		return r.LoadDigests()
	}
	return nil
}

// prefetchUntil is how far the second request reads ahead once the header is in: through the
// working set, unless a kept cache in cacheDir or the chunk store (nil: none) may already hold
// it (then only the index: the fetcher asks for what is missing once it knows).
func prefetchUntil(cacheDir string, store ChunkStore) func(overlay.Plan) int64 {
	return func(p overlay.Plan) int64 {
		if cloudletfs.Kept(cacheDir) || HoldsOverlay(store, p.ID) {
			return p.IndexEnd
		}
		return p.ResumeEnd
	}
}

// CacheConfig is the cloudletfs configuration of a cache in dir of the overlay behind r: the
// base's images under the overlay's plans, with misses sent to d. The caller sets Identity
// and DiscardModified.
func CacheConfig(b *base.Base, r *overlay.Reader, dir string, d cloudletfs.Demander) cloudletfs.Config {
	plans := Plans(r.Index)
	cfg := cloudletfs.Config{
		Dir:      dir,
		Demander: d,
		Images: []cloudletfs.ImageConfig{
			{Name: "disk", Size: r.Index.Images[0].Size, Base: b.Path(base.DiskFile), Plan: plans[0]},
			{Name: "memory", Size: r.Index.Images[1].Size, Base: b.Path(base.MemoryFile), Plan: plans[1]},
		},
	}
	// A reused cache's present chunks are checked against the index's digests when it is
	// opened: a mismatch is fetched again, never served.
	for i, expected := range ExpectedDigests(r) {
		cfg.Images[i].Expected = expected
	}
	return cfg
}
