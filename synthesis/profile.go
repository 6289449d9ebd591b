package synthesis

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// slowLinkRate is the fetch rate of every second profile run: 10 Mbit/s.
const slowLinkRate = 10e6 / 8

// Profile records a working set the way REAP does: it synthesises the overlay locally, notes
// the order in which the VM first touches overlay chunks until the probe answers (plus
// o.ProfileTail), and rewrites the overlay so those chunks come first, in that order, in
// blobs of their own: one range request fetches the whole working set. The rest follow in
// place order (see overlay.Reorder). The new overlay is written atomically to output.
//
// It does so runs times and takes the union (first run's order, then what later runs added):
// a guest does not touch quite the same memory twice (the page allocator hands out whatever
// is free when timers fire), and a chunk one run missed costs a later synthesis a demand miss
// of a whole blob. Every second run fetches at slowLinkRate: a VM that waits for its working
// set on a slow link runs its timers meanwhile and touches chunks that a run over a local
// file never waits long enough to touch (measured: 36 of 666 chunks at 10 Mbit/s missed a
// profile of three fast runs).
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
		ro := o
		ro.CacheDir = filepath.Join(cacheDir, fmt.Sprintf("run-%d", i+1))
		if i%2 == 1 && ro.Fetch.BytesPerSecond == 0 {
			ro.Fetch.BytesPerSecond = slowLinkRate
		}
		trace, err := profileRun(ctx, ro)
		if err != nil {
			return 0, fmt.Errorf("profile run %d: %w", i+1, err)
		}
		accessed = append(accessed, trace.Accessed...)
	}
	src, err := origin.Open(ctx, o.Source, o.HTTP)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	r, err := overlay.Open(origin.ReaderAt(ctx, src), src.Size(), ExpectFor(o.Base))
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return overlay.Reorder(ctx, r, places(accessed), output, filepath.Dir(output))
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

// places are the chunks a trace saw the VM touch, in order.
func places(accessed []cloudletfs.ChunkEvent) []overlay.Place {
	ps := make([]overlay.Place, len(accessed))
	for i, ev := range accessed {
		ps[i] = overlay.Place{Image: ev.Image, Index: ev.Chunk}
	}
	return ps
}
