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

// OpenOverlay reads the index of the overlay behind src and checks it against b: its base,
// its images and its VM configuration. The reader reads through src with ctx.
func OpenOverlay(ctx context.Context, src origin.Origin, b *base.Base) (*overlay.Reader, error) {
	r, err := overlay.Open(origin.ReaderAt(ctx, src), src.Size(), ExpectFor(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	if err := CheckOverlay(r, b); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
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
	for i, expected := range ExpectedDigests(r.Index) {
		cfg.Images[i].Expected = expected
	}
	return cfg
}
