package synthesis

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
)

// Profile records a working set the way REAP does: it synthesises the overlay locally, notes
// the order in which the VM first touches overlay chunks until the probe answers (plus
// o.ProfileTail), and rewrites the overlay so those chunks come first, in that order, in
// blobs of their own: one range request fetches the whole working set. The new overlay is
// written atomically to output.
//
// It does so runs times and takes the union (first run's order, then what later runs added):
// a guest does not touch quite the same memory twice (the page allocator hands out whatever
// is free when timers fire), and a chunk one run missed costs a later synthesis a demand miss
// of a whole blob.
func Profile(ctx context.Context, o Options, runs int, output string) (ws int, err error) {
	if o.Probe == nil {
		return 0, errors.New("profile needs a probe: the working set is what the VM touches until it answers")
	}
	var accessed []cloudletfs.ChunkEvent
	cacheDir := o.CacheDir
	if runs < 1 {
		return 0, fmt.Errorf("profile: %d runs: want at least 1", runs)
	}
	for i := range runs {
		o.CacheDir = filepath.Join(cacheDir, fmt.Sprintf("run-%d", i+1))
		trace, err := profileRun(ctx, o)
		if err != nil {
			return 0, fmt.Errorf("profile run %d: %w", i+1, err)
		}
		accessed = append(accessed, trace.Accessed...)
	}
	src, err := OpenOrigin(context.Background(), o.Source, o.HTTP)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	r, err := overlay.Open(readerAt{context.Background(), src}, src.Size(), ExpectFor(o.Base))
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return rewrite(context.Background(), r, accessed, output, filepath.Dir(output))
}

// profileRun is one synthesis, stopped once the trace is taken.
func profileRun(ctx context.Context, o Options) (*cloudletfs.Trace, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var trace *cloudletfs.Trace
	o.EarlyStart, o.ExitWhenComplete = true, false
	o.OnTrace = func(t cloudletfs.Trace) {
		trace = &t
		cancel()
	}
	if _, err := Run(ctx, o); err != nil && trace == nil {
		return nil, err
	}
	if trace == nil {
		return nil, errors.New("the run ended before the probe answered")
	}
	return trace, nil
}

// rewrite writes r's overlay again with the stored chunks touched in accessed first.
func rewrite(ctx context.Context, r *overlay.Reader, accessed []cloudletfs.ChunkEvent, output, tmpDir string) (int, error) {
	ix := r.Index
	place := map[[2]int64]int{}
	for e, c := range ix.Chunks {
		place[[2]int64{int64(c.Image), c.Index}] = e
	}
	entries := make([]overlay.Entry, len(ix.Chunks))
	for e, c := range ix.Chunks {
		entries[e] = overlay.Entry{Image: c.Image, Index: c.Index, Kind: c.Kind, BaseImage: c.BaseImage, BaseIndex: c.BaseIndex, Digest: c.Digest}
		if c.Kind == overlay.KindSelf {
			t := ix.Chunks[c.Self]
			entries[e].SameImage, entries[e].SameIndex = t.Image, t.Index
		}
	}
	// The working set: stored chunks in order of first touch (a self reference brings in the
	// chunk it repeats).
	var order []int
	seen := map[int]bool{}
	for _, ev := range accessed {
		im := ix.ImageIndex(ev.Image)
		e, ok := place[[2]int64{int64(im), ev.Chunk}]
		if im < 0 || !ok {
			continue
		}
		if ix.Chunks[e].Kind == overlay.KindSelf {
			e = int(ix.Chunks[e].Self)
		}
		if ix.Chunks[e].Kind == overlay.KindBlob && !seen[e] {
			seen[e] = true
			order = append(order, e)
		}
	}
	ws := len(order)
	// Then the rest in the old prefetch order.
	for _, p := range ix.Prefetch {
		if !seen[int(p)] {
			seen[int(p)] = true
			order = append(order, int(p))
		}
	}
	dev, err := r.Devstate()
	if err != nil {
		return 0, err
	}
	meta := overlay.Meta{BaseID: ix.BaseID, Images: ix.Images, Config: ix.Config, Codec: ix.Codec, WorkingSet: ws}
	tmp, err := os.CreateTemp(tmpDir, "."+filepath.Base(output)+".partial-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	_, err = overlay.Write(ctx, tmp, tmpDir, meta, dev, entries, order, func(im uint8, i int64) ([]byte, error) {
		return r.ChunkData(place[[2]int64{int64(im), i}])
	})
	if err != nil {
		return 0, err
	}
	if err := errors.Join(tmp.Chmod(0o600), tmp.Sync(), tmp.Close()); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), output); err != nil {
		return 0, fmt.Errorf("profile: %w", err)
	}
	return ws, nil
}
