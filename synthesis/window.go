package synthesis

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// maxWindow bounds the prefetch window's buffer, which is allocated before its bytes arrive on
// the word of the overlay's header: a resume end further out is simply not prefetched past it.
const maxWindow = 96 << 20

// window is an origin that streams one range ahead of the reads that need it: what a resume
// needs, asked for as soon as the overlay's header is in (the second round trip), and read by
// Open (the rest of the index, the device state) and the fetcher (the working set) as its bytes
// arrive. Reads outside the range, or after the stream failed, go to the origin.
type window struct {
	origin.Origin
	ctx context.Context
	// until decides how far to prefetch, given the header's plan (0: nothing).
	until func(overlay.Plan) int64
	// stored, if set, returns the overlay's index and device state, and its digest table, as
	// a chunk store holds them (see prefix.go), or nils.
	stored func(id string) (prefix, table []byte)

	mu     sync.Mutex
	start  int64
	buf    []byte        // guarded by mu: nil until Prefetch
	filled int           // guarded by mu
	served int           // guarded by mu: bytes copied out of buf
	failed bool          // guarded by mu: the stream stopped short; read from the origin
	moved  chan struct{} // guarded by mu: closed and replaced when filled or failed change
	// keepEnd, once set (by keep), is where the overlay's index and device state end: those
	// bytes are kept (in kept) when buf is dropped, for the chunk store.
	keepEnd    int64  // guarded by mu
	kept       []byte // guarded by mu
	fromStored bool   // guarded by mu: buf came from the chunk store, not the origin
	table      []byte // guarded by mu: the digest table the chunk store gave with buf
	// The stream's pace, for demands ahead of it (see worthWaitingLocked): when it was asked
	// for, and when and at what fill its first bytes came.
	asked, firstAt time.Time // guarded by mu
	firstFilled    int       // guarded by mu
	dup            int64     // guarded by mu: bytes of the window asked of the origin again

	received atomic.Int64 // bytes that came from the origin, through the stream or not

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// BytesRead is what the window received from the origin so far: every byte a session fetched.
func (w *window) BytesRead() int64 { return w.received.Load() }

// counting wraps progress so that the bytes it reports are added to received.
func (w *window) counting(progress func(n int)) func(n int) {
	last := 0
	return func(n int) {
		w.received.Add(int64(n - last))
		last = n
		progress(n)
	}
}

func newWindow(ctx context.Context, o origin.Origin, until func(overlay.Plan) int64) *window {
	return &window{Origin: o, ctx: ctx, until: until, moved: make(chan struct{})}
}

// readerAt is what overlay.Open reads through: the window, able to prefetch.
func (w *window) readerAt() io.ReaderAt {
	return windowReaderAt{ReaderAt: origin.ReaderAt(w.ctx, w), w: w}
}

type windowReaderAt struct {
	io.ReaderAt
	w *window
}

func (r windowReaderAt) Prefetch(p overlay.Plan) { r.w.prefetch(p) }

// prefetch starts the stream of [p.First, until(p)), unless the chunk store holds those bytes.
func (w *window) prefetch(p overlay.Plan) {
	end := min(w.until(p), p.First+maxWindow, w.Size())
	// The store's copy goes past the index, to the device state's end: it serves those reads
	// too, even when the first read held the whole index.
	if w.stored != nil {
		if b, table := w.stored(p.ID); b != nil && int64(len(b)) >= end {
			w.mu.Lock()
			w.start, w.buf, w.filled, w.fromStored, w.table = 0, b, len(b), true, table
			w.mu.Unlock()
			return
		}
	}
	if end <= p.First {
		return
	}
	ctx, cancel := context.WithCancel(w.ctx)
	w.mu.Lock()
	w.start, w.buf, w.cancel, w.asked = p.First, make([]byte, end-p.First), cancel, time.Now()
	buf := w.buf
	w.mu.Unlock()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		err := origin.ReadProgress(ctx, w.Origin, buf, p.First, w.counting(func(n int) { w.update(n, false) }))
		if err != nil {
			w.update(0, true)
		}
	}()
}

// releaseLocked drops the buffer once the stream is in and as many bytes were read out of it
// as it holds: each byte is read once (the index and device state by Open, each blob by the
// fetcher), so the rest of a session does not carry the working set twice, once in the cache
// and once here. A read that comes later anyway goes to the origin.
func (w *window) releaseLocked() {
	if w.filled == len(w.buf) && w.served >= len(w.buf) {
		w.keepLocked()
		w.buf = nil
	}
}

func (w *window) update(filled int, failed bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.firstAt.IsZero() && filled > 0 {
		w.firstAt, w.firstFilled = time.Now(), filled
	}
	w.filled = max(w.filled, filled)
	w.failed = w.failed || failed
	close(w.moved)
	w.moved = make(chan struct{})
}

// Close stops the stream and waits for it, then closes the origin.
func (w *window) Close() error {
	w.mu.Lock()
	cancel := w.cancel
	w.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	w.wg.Wait()
	return w.Origin.Close()
}

func (w *window) ReadAt(ctx context.Context, p []byte, off int64) error {
	return w.ReadAtProgress(ctx, p, off, func(int) {})
}

// ReadAtProgress serves a read that lies inside the window from the stream, as its bytes
// arrive; any other read, or one the stream failed to serve, from the origin.
func (w *window) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) error {
	return w.read(ctx, p, off, progress, false)
}

// ReadDemand is ReadAtProgress for a read the VM waits for: one inside the window but too far
// ahead of the stream is asked of the origin at once, instead of waiting for the stream to
// come to it. (A VM resumed from a profile touches, now and then, a chunk the profile put late;
// on a guest that needs its whole 34 MB overlay at 10 Mbit/s, such reads waited 26 s in all.)
func (w *window) ReadDemand(ctx context.Context, p []byte, off int64, progress func(n int)) error {
	return w.read(ctx, p, off, progress, true)
}

func (w *window) read(ctx context.Context, p []byte, off int64, progress func(n int), demand bool) error {
	done := 0
	for done < len(p) {
		w.mu.Lock()
		inside := w.buf != nil && off >= w.start && off+int64(len(p)) <= w.start+int64(len(w.buf)) && !w.failed
		direct := inside && done == 0 && demand && !w.worthWaitingLocked(off, int64(len(p)))
		if direct {
			// The stream's copy of these bytes will never be read out: count them as
			// served, so that the buffer is still dropped once the rest has been.
			w.served += len(p)
			w.dup += int64(len(p))
		}
		if !inside || direct {
			w.mu.Unlock()
			from := done
			err := origin.ReadProgress(ctx, w.Origin, p[from:], off+int64(from), w.counting(func(n int) { progress(from + n) }))
			if err == nil {
				w.extendKept(p[from:], off+int64(from))
			}
			return err
		}
		have := min(int64(len(p)), w.start+int64(w.filled)-off)
		if have > int64(done) {
			copy(p[done:have], w.buf[off-w.start+int64(done):])
			w.served += int(have) - done
			done = int(have)
			w.releaseLocked()
			w.mu.Unlock()
			progress(done)
			continue
		}
		moved := w.moved
		w.mu.Unlock()
		select {
		case <-moved:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// dupShare bounds the bytes that demands ahead of the stream ask of the origin again, which
// the stream brings too: at most a 32nd of the window. A VM that touches its working set far
// out of the profile's order then costs the link at most 3 % more than the overlay. (Measured
// on the realistic guest at 1 Mbit/s, unbounded: 58.8 MB of its 53.4 MB overlay fetched
// before the first answer, 470 s against 428 s downloading first.)
const dupShare = 32

// worthWaitingLocked says whether n bytes at off, inside the window, come sooner from the
// stream than from a request of their own. The stream brings them once it has moved the gap
// between its fill and off, at its pace; a request takes a round trip plus n bytes on the half
// of the link it would share with the stream. Until the stream's pace is known, or once the
// bytes asked again reach their bound (dupShare), it waits.
func (w *window) worthWaitingLocked(off, n int64) bool {
	gap := off - (w.start + int64(w.filled))
	if gap <= 0 || w.firstAt.IsZero() || w.dup+n > int64(len(w.buf))/dupShare {
		return true
	}
	elapsed := time.Since(w.firstAt).Seconds()
	if elapsed <= 0 || w.filled <= w.firstFilled {
		return true
	}
	rate := float64(w.filled-w.firstFilled) / elapsed // bytes per second
	rtt := w.firstAt.Sub(w.asked).Seconds()
	return float64(gap) <= rate*rtt+2*float64(n)
}
