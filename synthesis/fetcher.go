package synthesis

import (
	"context"
	"fmt"
	"io"
	"log"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// FetchOptions tune the fetcher.
type FetchOptions struct {
	// Concurrency is how many range requests run at once; 0 means 4.
	Concurrency int
	// BytesPerSecond caps the fetcher's use of the link; 0 means no cap.
	BytesPerSecond int64
	// Bulk streams the whole overlay in prefetch order from the start, without pausing for
	// demand misses: for a VM that waits for all of it anyway (download-first).
	Bulk bool
	// Store, if set, supplies the blobs whose chunks it has, and takes every chunk fetched.
	Store ChunkStore
}

// backgroundRun is the most a background range request asks for while the VM is served
// blob by blob. Only one such request runs at a time, and none starts while a demand miss is
// being fetched, so a miss shares the link with at most one short background request.
// (Measured at 10 Mbit/s: with 2 MiB runs started regardless of demand, the profiled TTFR was
// 6.6 s; see RESULTS.md.)
const backgroundRun = 512 << 10

// streamRange is the most one request of a stream asks for: the working set, and the rest of
// the overlay in bulk mode. A stream is a chain of such ranges, the next asked for just before
// the last ends, so the link never idles between them, and a failure costs one range's retries.
const streamRange = 4 << 20

// bulkAfter is how much of the overlay (raw bytes of the blobs) the VM may demand before the
// fetcher decides it is pulling most of the overlay anyway, and streams the rest in bulk
// instead of blob by blob. It was measured as eight blobs of 1 MiB; counted in bytes, it stays
// that whatever size the overlay's blobs are (eight 64 KiB blobs are no sign of a VM that
// reads everything).
//
// An overlay that records no working set gives no reason to wait for demands: its background
// runs chain from the start (see NewFetcher), one blob each (or a round trip's worth of bytes,
// if more) until the switch, so that a demand for a blob already in flight waits for little
// more than one blob, not for a 4 MiB range. (Measured on a guest that reads its whole
// overlay first, at 1 Gbit/s and 20 ms: 1.09x download-first with the switch after 8 blobs,
// 0.68x with chained blobs, 0.78x with 4 MiB ranges at once; on a guest that needs half its
// overlay, at 10 Mbit/s: 0.59x, 0.66x, 0.71x.)
const bulkAfter = 8 << 20

const (
	blobWaiting = iota
	blobInFlight
	blobDone
)

// Fetcher moves an overlay's chunks into cloudletfs: the working set first (a stream of
// ranges), then the rest in prefetch order, with demand misses jumping the queue (with no
// working set, that rest follows without pausing for them); once the VM is seen pulling most of
// the overlay anyway, or for download-first, the rest streams in bulk.
// Each blob is delivered as soon as its bytes are in, and every blob and chunk is verified
// before it is delivered. It is cloudletfs's Demander.
type Fetcher struct {
	// Fixed after construction.
	r      *overlay.Reader
	origin origin.Origin
	base   []io.ReaderAt
	place  map[[2]int64]int // (image, chunk) -> entry
	users  [][]int          // blob -> entries it feeds (its own chunks and self references)
	opts   FetchOptions
	limit  *rate.Limiter

	fs *cloudletfs.FS
	// Where the fetcher's time goes, in nanoseconds summed over workers: waiting for range
	// requests, decoding blobs (blob digest and decompression), checking chunk digests, and
	// writing chunks into cloudletfs.
	requests, requestNs, decodeNs, verifyNs, writeNs atomic.Int64
	outside                                          atomic.Int64 // see FetchStats.OutsideProfile
	st                                               storeState   // the chunk store's part

	mu         sync.Mutex
	state      []uint8  // guarded by mu: per blob
	urgent     []uint32 // guarded by mu: demanded blobs, oldest first
	next       int      // guarded by mu: next blob in background order
	bgRuns     int      // guarded by mu: background runs in flight (two while one ends)
	bgTail     bool     // guarded by mu: the background run in flight is about to end
	chain      bool     // guarded by mu: background runs chain without a gap and do not pause for demands
	bulk       bool     // guarded by mu: chained, and stream ranges (4 MiB) rather than one blob
	perRTT     int64    // guarded by mu: bytes the link moves in a round trip, as the last range saw
	demanded   int64    // guarded by mu: raw bytes of the blobs fetched on demand so far
	demands    int      // guarded by mu: demand fetches in flight
	left       int      // guarded by mu: blobs not done
	baseDone   bool     // guarded by mu: base references delivered
	urgentBase []int    // guarded by mu: demanded base references (entries), oldest first
	wake       chan struct{}
	complete   chan struct{}
	// digests is closed once the overlay's chunk digest table is loaded (see loadDigests).
	digests chan struct{}

	// errMu, not mu, guards the failure: a panic recovered in a goroutine that held mu (see
	// goSafe) must still be able to fail the fetch.
	errMu  sync.Mutex
	err    error         // guarded by errMu
	failed chan struct{} // closed once err is set

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewFetcher prepares a fetcher for the overlay behind r (read through src), with base
// images for base references, in the overlay's image order.
func NewFetcher(r *overlay.Reader, src origin.Origin, base []io.ReaderAt, opts FetchOptions) *Fetcher {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	ix := r.Index
	f := &Fetcher{r: r, origin: src, base: base, opts: opts, place: map[[2]int64]int{},
		users: make([][]int, len(ix.Blobs)), state: make([]uint8, len(ix.Blobs)), left: len(ix.Blobs),
		wake: make(chan struct{}, 1), complete: make(chan struct{}), failed: make(chan struct{}), digests: make(chan struct{}),
		// With no working set recorded, nothing says which blobs the VM needs first: keep the
		// link busy from the start rather than pay a round trip per demanded blob until the
		// switch to bulk.
		chain: opts.Bulk || ix.WorkingSetBlobs == 0, bulk: opts.Bulk}
	for e, c := range ix.Chunks {
		f.place[[2]int64{int64(c.Image), c.Index}] = e
		switch c.Kind {
		case overlay.KindBlob:
			f.users[c.Blob] = append(f.users[c.Blob], e)
		case overlay.KindSelf:
			b := ix.Chunks[c.Self].Blob
			f.users[b] = append(f.users[b], e)
		}
	}
	if opts.BytesPerSecond > 0 {
		f.limit = rate.NewLimiter(rate.Limit(opts.BytesPerSecond), 256<<10)
	}
	if r.DigestsLoaded() {
		close(f.digests)
	}
	return f
}

// Plans returns the cloudletfs plan of each image: zero chunks are zero, every other chunk the
// overlay lists is pending, the rest is base.
func Plans(ix *overlay.Index) [][]cloudletfs.State {
	plans := make([][]cloudletfs.State, len(ix.Images))
	for i, im := range ix.Images {
		plans[i] = make([]cloudletfs.State, (im.Size+int64(ix.ChunkSize)-1)/int64(ix.ChunkSize))
	}
	for _, c := range ix.Chunks {
		s := cloudletfs.StatePending
		if c.Kind == overlay.KindZero {
			s = cloudletfs.StateZero
		}
		plans[c.Image][c.Index] = s
	}
	return plans
}

// Start begins fetching into fs. Blobs whose chunks are all present already (a cache kept from
// an earlier run) are not fetched again.
func (f *Fetcher) Start(ctx context.Context, fs *cloudletfs.FS) {
	f.fs = fs
	ix := f.r.Index
	f.mu.Lock()
	for b, users := range f.users {
		have := len(users) > 0
		for _, e := range users {
			c := ix.Chunks[e]
			// A modified chunk is the VM's own (a mount keeps its writes): nothing to fetch.
			if st := fs.Image(ix.Images[c.Image].Name).State(c.Index); st != cloudletfs.StatePresent && st != cloudletfs.StateModified {
				have = false
				break
			}
		}
		if have {
			f.state[b] = blobDone
			f.left--
		}
	}
	f.mu.Unlock()
	ctx, f.cancel = context.WithCancel(ctx)
	if !f.r.DigestsLoaded() {
		f.goSafe(func() {
			if err := f.loadDigests(ctx); err != nil && ctx.Err() == nil {
				f.fail(err)
			}
		})
	}
	f.startStore(ctx)
	f.goSafe(func() {
		if err := f.deliverBaseRefs(ctx); err != nil {
			f.fail(err)
		}
	})
	if len(f.r.Index.Blobs) == 0 {
		f.finishIfDone()
	}
	for range f.opts.Concurrency {
		f.goSafe(func() { f.worker(ctx) })
	}
}

// loadDigests reads the chunk digest table. It follows the working set in the overlay, so it
// comes through the window in the stream that brings the working set, right after it (or
// with a request of its own when the window does not stream it). Until it is in, blobs are
// checked against their own digests only, and the chunk store is not asked for chunks.
func (f *Fetcher) loadDigests(ctx context.Context) error {
	off, n := f.r.DigestTableRange()
	// n is a digest per stored chunk entry of an index already decoded: bounded by it.
	b := make([]byte, n)
	if head := copy(b, f.r.PrefixHead(off, n)); head < len(b) {
		if err := f.origin.ReadAt(ctx, b[head:], off+int64(head)); err != nil {
			return fmt.Errorf("overlay digest table: %w", err)
		}
	}
	if err := f.r.SetDigestTable(b); err != nil {
		return err
	}
	close(f.digests)
	return nil
}

// goSafe runs fn in a goroutine that Close waits for. The fetcher decodes what strangers sent:
// a panic there (a defect, which the fuzzers hunt) fails this fetch, and with it its session,
// instead of killing the process and every VM it serves.
func (f *Fetcher) goSafe(fn func()) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer func() {
			if p := recover(); p != nil {
				log.Printf("synthesis: panic in the fetcher: %v\n%s", p, debug.Stack())
				f.fail(fmt.Errorf("internal error in the fetcher (panic): %v", p))
			}
		}()
		fn()
	}()
}

// Close stops the fetcher and waits for its goroutines.
func (f *Fetcher) Close() {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
}

// Complete is closed when every chunk has been delivered.
func (f *Fetcher) Complete() <-chan struct{} { return f.complete }

// Failed is closed when the fetcher gave up; Err says why.
func (f *Fetcher) Failed() <-chan struct{} { return f.failed }

// Err is why the fetcher failed.
func (f *Fetcher) Err() error {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	return f.err
}

// FetchStats is where the fetcher's time went so far, summed over its workers (so it can
// exceed the wall-clock time).
type FetchStats struct {
	Requests   int64   `json:"requests"`
	RequestSec float64 `json:"request_s"` // waiting for range requests (the network)
	DecodeSec  float64 `json:"decode_s"`  // blob digests and decompression
	VerifySec  float64 `json:"verify_s"`  // chunk digests
	WriteSec   float64 `json:"write_s"`   // chunks into cloudletfs's cache
	// FromStoreBytes are chunk bytes taken from the chunk store instead of the origin, in
	// StoreSec; StoreMissBlobs are blobs looked up there and fetched.
	FromStoreBytes int64   `json:"from_store_bytes,omitempty"`
	StoreSec       float64 `json:"store_s,omitempty"`
	StoreMissBlobs int64   `json:"store_miss_blobs,omitempty"`
	// OutsideProfile counts the chunks the VM waited for that the overlay's working set does
	// not hold (every one, for an overlay with no working set): what its profile missed. A
	// VM that outruns its link also waits for working-set chunks still on their way; those
	// are not counted here.
	OutsideProfile int64 `json:"outside_profile"`
}

// Stats is where the fetcher's time went so far.
func (f *Fetcher) Stats() FetchStats {
	sec := func(a *atomic.Int64) float64 { return time.Duration(a.Load()).Seconds() }
	st := FetchStats{Requests: f.requests.Load(), RequestSec: sec(&f.requestNs), DecodeSec: sec(&f.decodeNs),
		VerifySec: sec(&f.verifyNs), WriteSec: sec(&f.writeNs), OutsideProfile: f.outside.Load()}
	f.storeStats(&st)
	return st
}

// Demand puts the blob holding a demanded chunk at the front of the queue; a demanded base
// reference is read from the base before any other.
func (f *Fetcher) Demand(image string, c int64, prio cloudletfs.Priority) {
	im := f.r.Index.ImageIndex(image)
	e, ok := f.place[[2]int64{int64(im), c}]
	if im < 0 || !ok {
		return
	}
	ch := f.r.Index.Chunks[e]
	if ch.Kind == overlay.KindSelf {
		ch = f.r.Index.Chunks[ch.Self]
	}
	if ch.Kind == overlay.KindBase {
		f.demandBase(e)
		return
	}
	if ch.Kind != overlay.KindBlob {
		return
	}
	if ch.Blob >= f.r.Index.WorkingSetBlobs {
		f.outside.Add(1)
	}
	f.mu.Lock()
	if !f.demandStoreLocked(int(ch.Blob)) && f.state[ch.Blob] == blobWaiting {
		f.urgent = append(f.urgent, ch.Blob)
	}
	f.mu.Unlock()
	f.signal()
}

func (f *Fetcher) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// pickLocked chooses the next run of blobs to fetch: a demanded blob alone, else the working
// set, else the rest in prefetch order; the last two are background runs, one at a time but
// for the overlap of a run's end and the next one's start.
func (f *Fetcher) pickLocked() (first, end int, background, ok bool) {
	for len(f.urgent) > 0 {
		b := int(f.urgent[0])
		f.urgent = f.urgent[1:]
		if f.state[b] == blobWaiting {
			f.demanded += f.r.Index.Blobs[b].Raw
			f.bulk = f.bulk || f.demanded >= bulkAfter
			f.chain = f.chain || f.bulk
			return b, b + 1, false, true
		}
	}
	if f.bgRuns > 1 || f.bgRuns == 1 && !f.bgTail || f.demands > 0 && !f.chain {
		// bgTail is set only by runs that stream (see worker): others run one at a time.
		return 0, 0, false, false
	}
	next := f.next
	for next < len(f.state) && f.state[next] != blobWaiting {
		next++
	}
	if next == len(f.state) || f.storeBusyLocked(next) {
		// While the store pass runs, a range request would fetch what the store has (and
		// next stays put: a blob the pass holds now may come back to wait).
		return 0, 0, false, false
	}
	f.next = next
	first, end = f.next, f.next+1
	if off, n := f.r.BlobRange(first); off+n <= f.r.PrefixLen() {
		// Blobs that came with the index: deliver them all now, no request needed.
		for end < len(f.state) && f.state[end] == blobWaiting {
			if o, l := f.r.BlobRange(end); o+l > f.r.PrefixLen() {
				break
			}
			end++
		}
		return first, end, true, true
	}
	ws := int(f.r.Index.WorkingSetBlobs)
	limit := int64(backgroundRun)
	switch {
	case first < ws || f.bulk:
		limit = streamRange
	case f.chain:
		// Two chained runs in flight keep the link busy only if each holds a round trip's
		// worth of bytes (a long fat link); the next blob still starts the run. Twice that:
		// the estimate comes from ranges whose reads pause while their blobs are delivered,
		// so it falls short. (Measured on the realistic guest, unprofiled, at 1 Gbit/s and
		// 20 ms, 2 runs each beside download-first: 1.37x its TTFR with once, 0.96x with
		// twice, 0.92x with four times.)
		limit = min(max(limit, 2*f.perRTT), streamRange)
	}
	size := f.r.Index.Blobs[first].Length
	for end < len(f.state) && f.state[end] == blobWaiting && end != ws {
		if size += f.r.Index.Blobs[end].Length; size > limit {
			break
		}
		end++
	}
	return first, end, true, true
}

func (f *Fetcher) worker(ctx context.Context) {
	for {
		f.mu.Lock()
		first, end, background, ok := f.pickLocked()
		// The working set and chained runs (bulk, or no working set) follow each other without
		// a gap; otherwise, while the VM is served blob by blob, a background run waits for the
		// last to end, so that a demand miss shares the link with one background run at most.
		stream := background && (first < int(f.r.Index.WorkingSetBlobs) || f.chain)
		if ok {
			for b := first; b < end; b++ {
				f.state[b] = blobInFlight
			}
			if background {
				f.bgRuns++
				f.bgTail = false
			} else {
				f.demands++
			}
		}
		more := len(f.urgent) > 0
		f.mu.Unlock()
		if more {
			f.signal() // wake another idle worker for the next demand
		}
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-f.complete:
				return
			case <-f.wake:
				continue
			}
		}
		tail := func() {}
		if stream {
			tail = f.tailOfRun
		}
		err := f.fetchRun(ctx, first, end, tail, !background)
		f.mu.Lock()
		if background {
			f.bgRuns--
		} else {
			f.demands--
		}
		f.mu.Unlock()
		f.signal()
		if err != nil {
			if ctx.Err() == nil {
				f.fail(err)
			}
			return
		}
	}
}

// tailOfRun lets the next background run start: the one in flight is about to end.
func (f *Fetcher) tailOfRun() {
	f.mu.Lock()
	f.bgTail = true
	f.mu.Unlock()
	f.signal()
}

// lap adds the time since t to a counter and returns now.
func (f *Fetcher) lap(counter *atomic.Int64, t time.Time) time.Time {
	now := time.Now()
	counter.Add(int64(now.Sub(t)))
	return now
}

func (f *Fetcher) finishIfDone() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.left == 0 && f.baseDone && f.Err() == nil { // errMu inside mu: fail never takes mu
		select {
		case <-f.complete:
		default:
			close(f.complete)
		}
	}
}

func (f *Fetcher) fail(err error) {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	if f.err == nil {
		f.err = err
		close(f.failed)
		if f.cancel != nil {
			f.cancel()
		}
	}
}
