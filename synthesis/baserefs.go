package synthesis

import (
	"context"
	"sort"

	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
)

// A base reference is a chunk equal to a base chunk elsewhere: the fetcher reads it from the
// local base, checks its digest and delivers it, with no byte from the origin. There are
// thousands of them (6,701 on one realistic overlay), and a VM that resumes touches some at
// once. In index order, the realistic guest's first read after the resume (128 KiB of memory
// at 374 MiB, 16 of its chunks base references) waited 45-80 ms for the pass to get there:
// those were all 16-17 misses of every profiled run. So the references next to the working
// set go first, in the order the profile touched it, and a demanded one before any other.

// nearWindow is how many chunks around a working-set chunk count as next to it: 128 KiB,
// the most the kernel reads of a FUSE file at once, so a read that brings a working-set chunk
// brings the references beside it too.
const nearWindow = 32

// baseRun is a run of base references side by side, read from the base at once.
type baseRun struct{ entry, n int }

// baseRunOrder lists the overlay's runs of base references (see Reader.BaseRefRun) in the
// order they are delivered: those that share a nearWindow with a working-set chunk, in the
// working set's prefetch order, then the rest in index order.
func baseRunOrder(r *overlay.Reader) []baseRun {
	ix := r.Index
	type window struct{ image, w int64 }
	firstTouch := map[window]int{} // window -> earliest prefetch position of a working-set chunk in it
	for i, e := range ix.Prefetch {
		c := ix.Chunks[e]
		if c.Blob >= ix.WorkingSetBlobs {
			break // blobs hold chunks in prefetch order: the working set is a prefix
		}
		w := window{int64(c.Image), c.Index / nearWindow}
		if _, seen := firstTouch[w]; !seen {
			firstTouch[w] = i
		}
	}
	type ranked struct {
		baseRun
		rank int // prefetch position of the working set next to it; len(Prefetch) if none
	}
	var runs []ranked
	for e := 0; e < len(ix.Chunks); {
		n := r.BaseRefRun(e)
		if n == 0 {
			e++
			continue
		}
		run := ranked{baseRun{e, n}, len(ix.Prefetch)}
		for _, c := range ix.Chunks[e : e+n] {
			if i, ok := firstTouch[window{int64(c.Image), c.Index / nearWindow}]; ok {
				run.rank = min(run.rank, i)
			}
		}
		runs = append(runs, run)
		e += n
	}
	sort.SliceStable(runs, func(a, b int) bool { return runs[a].rank < runs[b].rank })
	out := make([]baseRun, len(runs))
	for i, run := range runs {
		out[i] = run.baseRun
	}
	return out
}

// demandBase queues a demanded base reference for delivery before the next run in order.
func (f *Fetcher) demandBase(e int) {
	f.mu.Lock()
	f.urgentBase = append(f.urgentBase, e)
	f.mu.Unlock()
}

// nextUrgentBase returns the run from the oldest demanded base reference that is still
// pending (a run delivered for an earlier demand may have taken the others).
func (f *Fetcher) nextUrgentBase() (baseRun, bool) {
	ix := f.r.Index
	for {
		f.mu.Lock()
		if len(f.urgentBase) == 0 {
			f.mu.Unlock()
			return baseRun{}, false
		}
		e := f.urgentBase[0]
		f.urgentBase = f.urgentBase[1:]
		f.mu.Unlock()
		c := ix.Chunks[e]
		if f.fs.Image(ix.Images[c.Image].Name).State(c.Index) == cloudletfs.StatePending {
			return baseRun{e, f.r.BaseRefRun(e)}, true
		}
	}
}

// deliverBaseRefs delivers every base reference, a run side by side at once, demanded ones
// first, then in baseRunOrder. A run is delivered whole even if a demand took part of it:
// cloudletfs skips the chunks that are no longer pending.
func (f *Fetcher) deliverBaseRefs(ctx context.Context) error {
	order := baseRunOrder(f.r)
	for len(order) > 0 {
		if ctx.Err() != nil {
			return nil
		}
		run, ok := f.nextUrgentBase()
		if !ok {
			run, order = order[0], order[1:]
		}
		if err := f.deliverBaseRun(run); err != nil {
			return err
		}
	}
	f.mu.Lock()
	f.baseDone = true
	f.mu.Unlock()
	f.finishIfDone()
	return nil
}

// deliverBaseRun reads a run of base references from the base, checked, into cloudletfs.
func (f *Fetcher) deliverBaseRun(run baseRun) error {
	data, err := f.r.BaseRun(f.base, run.entry, run.n)
	if err != nil {
		return err
	}
	c := f.r.Index.Chunks[run.entry]
	return f.fs.Deliver(f.r.Index.Images[c.Image].Name, c.Index, data)
}
