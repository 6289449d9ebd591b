package cloudletfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
)

// ErrNoSource is returned for a pending chunk when no Demander can supply it.
var ErrNoSource = errors.New("chunk is pending and there is no source for it")

// Image is the FUSE-free chunk store behind one image file: a read-only base file, a sparse
// cache file of the image's size, and a durable presence map. Reads are served from base,
// zeros or cache by chunk state; pending chunks block until Deliver.
type Image struct {
	// Fixed after construction.
	name     string
	size     int64
	chunks   int64
	base     *os.File // nil: the base is all zeros (or absent)
	cache    *os.File
	presence *presenceMap
	demander Demander
	events   *streams
	stats    imageStats
	overlay  []uint64 // bitset: chunks pending in the plan (the overlay's); nil without a plan

	// writeMu serialises VM writes, whose read-modify-write of a partial chunk must not
	// interleave with another write to the same chunk.
	writeMu sync.Mutex
	// syncMu serialises Sync (the flusher, fsyncs through the mount, Close): the presence
	// map has one writer, and records batches in the order they were taken, so a chunk's
	// older state never overwrites its newer one.
	syncMu sync.Mutex

	mu       sync.Mutex
	state    []State                 // guarded by mu
	waiters  map[int64]chan struct{} // guarded by mu: closed when the chunk leaves pending/busy
	demanded []uint64                // guarded by mu: bitset, chunks already demanded
	accessed []uint64                // guarded by mu: bitset, for first-access events
	modified []uint64                // guarded by mu: bitset, for first-modification events
	touched  []uint64                // guarded by mu: bitset, overlay chunks touched (stats)
	dirty    []dirtyChunk            // guarded by mu: cached but not yet durable in presence
	closed   bool                    // guarded by mu
	failed   error                   // guarded by mu: set by Fail; pending chunks never come
}

// dirtyChunk is a chunk whose bytes reached the cache file with the given state, not yet
// recorded in the presence map.
type dirtyChunk struct {
	c int64
	s State
}

// imageStats are counters for stats/; atomics, so the read path takes no extra lock.
type imageStats struct {
	bytesRead, bytesWritten   atomic.Int64
	chunksRead, chunksWritten atomic.Int64
	chunksFetched             atomic.Int64
	demandMisses              atomic.Int64
	stallNanos                atomic.Int64
	present                   atomic.Int64 // chunks whose bytes are in the cache
	pending                   atomic.Int64 // chunks still to come from the overlay
	overlayTouched            atomic.Int64
	overlayMissed             atomic.Int64
}

func bitGet(b []uint64, i int64) bool { return b[i/64]&(1<<(i%64)) != 0 }
func bitSet(b []uint64, i int64)      { b[i/64] |= 1 << (i % 64) }

// Name is the image's name.
func (img *Image) Name() string { return img.name }

// Size is the image's size in bytes.
func (img *Image) Size() int64 { return img.size }

// State returns a chunk's current state.
func (img *Image) State(c int64) State {
	img.mu.Lock()
	defer img.mu.Unlock()
	return img.state[c]
}

// chunkSpan is the byte range of chunk c within the image.
func (img *Image) chunkSpan(c int64) (off, n int64) {
	off = c * chunk.Size
	return off, min(chunk.Size, img.size-off)
}

// waitReadable blocks until every chunk in [first, last] can be read (not pending or busy),
// demanding pending ones that nobody demanded yet.
func (img *Image) waitReadable(ctx context.Context, first, last int64) error {
	var stalled time.Time
	for {
		var wait []chan struct{}
		var demand []int64
		img.mu.Lock()
		if img.closed {
			img.mu.Unlock()
			return errClosed
		}
		for c := first; c <= last; c++ {
			s := img.state[c]
			img.touchLocked(c, s == StatePending || s == stateBusy)
			if s != StatePending && s != stateBusy {
				continue
			}
			if err := img.failedLocked(c); err != nil {
				img.mu.Unlock()
				img.noteStall(stalled)
				return err
			}
			ch, ok := img.waiters[c]
			if !ok {
				ch = make(chan struct{})
				img.waiters[c] = ch
			}
			wait = append(wait, ch)
			if s == StatePending && !bitGet(img.demanded, c) {
				bitSet(img.demanded, c)
				demand = append(demand, c)
			}
		}
		img.mu.Unlock()
		if len(wait) == 0 {
			if !stalled.IsZero() {
				img.stats.stallNanos.Add(int64(time.Since(stalled)))
			}
			return nil
		}
		if stalled.IsZero() {
			stalled = time.Now()
		}
		if len(demand) > 0 {
			if img.demander == nil {
				return fmt.Errorf("image %s: chunk %d: %w", img.name, demand[0], ErrNoSource)
			}
			img.stats.demandMisses.Add(int64(len(demand)))
			for _, c := range demand {
				img.demander.Demand(img.name, c, PriorityDemand)
			}
		}
		for _, ch := range wait {
			select {
			case <-ch:
			case <-ctx.Done():
				img.stats.stallNanos.Add(int64(time.Since(stalled)))
				return fmt.Errorf("image %s: waiting for chunks %d-%d: %w", img.name, first, last, ctx.Err())
			}
		}
		// Re-check: a woken chunk is readable now, but another in the range may have gone busy.
	}
}

var errClosed = errors.New("cloudletfs: image is closed")

// ReadAt reads len(p) bytes at off (fewer at the end of the image). It blocks on pending
// chunks until they are delivered or ctx ends.
func (img *Image) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("image %s: read at %d: negative offset", img.name, off)
	}
	if off >= img.size || len(p) == 0 {
		return 0, nil
	}
	p = p[:min(int64(len(p)), img.size-off)]
	first, last := off/chunk.Size, (off+int64(len(p))-1)/chunk.Size
	if err := img.waitReadable(ctx, first, last); err != nil {
		return 0, err
	}
	img.stats.bytesRead.Add(int64(len(p)))
	img.stats.chunksRead.Add(last - first + 1)
	img.events.io(img.name, false, off, len(p))

	// Snapshot the states, then copy runs of chunks that share a source.
	states := make([]State, last-first+1)
	img.mu.Lock()
	copy(states, img.state[first:last+1])
	img.noteAccessLocked(first, last)
	img.mu.Unlock()

	for i := 0; i < len(states); {
		j := i + 1
		for j < len(states) && states[j] == states[i] {
			j++
		}
		lo := max(off, (first+int64(i))*chunk.Size)
		hi := min(off+int64(len(p)), (first+int64(j))*chunk.Size)
		dst := p[lo-off : hi-off]
		var err error
		switch states[i] {
		case StateZero:
			clear(dst)
		case StateBase:
			_, err = img.base.ReadAt(dst, lo)
		case StatePresent, StateModified:
			_, err = img.cache.ReadAt(dst, lo)
		default:
			// waitReadable guarantees no pending or busy chunk here; a busy one can only appear
			// through a concurrent write, which the kernel does not issue against a read of
			// the same page. Refuse rather than guess.
			return 0, fmt.Errorf("image %s: chunk %d became %v during a read", img.name, first+int64(i), states[i])
		}
		if err != nil {
			return 0, fmt.Errorf("image %s: read chunks %d-%d (%v): %w", img.name, first+int64(i), first+int64(j)-1, states[i], err)
		}
		i = j
	}
	return len(p), nil
}

func (img *Image) noteAccessLocked(first, last int64) {
	for c := first; c <= last; c++ {
		if !bitGet(img.accessed, c) {
			bitSet(img.accessed, c)
			img.events.chunk(kindAccessed, img.name, c)
		}
	}
}

// Deliver stores verified chunks: data holds whole chunks from chunk first on (the image's
// last chunk may be short). A chunk that is not pending (already delivered, or overwritten by
// the VM) is skipped. Each run of pending chunks is one write to the cache: a fetched blob's
// chunks mostly lie side by side, and one write per chunk was the fetch's largest CPU cost.
func (img *Image) Deliver(first int64, data []byte) error {
	last, err := img.deliverSpan(first, data)
	if err != nil {
		return err
	}
	for c := first; c <= last; {
		lo, hi, err := img.claimPending(c, last)
		if err != nil || lo > hi {
			return err
		}
		if err := img.storeRun(lo, hi, data[(lo-first)*chunk.Size:(hi-first)*chunk.Size+img.chunkLen(hi)]); err != nil {
			return err
		}
		c = hi + 1
	}
	return nil
}

// deliverSpan checks that data is whole chunks from first on, within the image, and returns
// the last of them.
func (img *Image) deliverSpan(first int64, data []byte) (last int64, err error) {
	if first < 0 || first >= img.chunks {
		return 0, fmt.Errorf("image %s: deliver chunk %d: out of range (%d chunks)", img.name, first, img.chunks)
	}
	n := int64(len(data))
	last = first + max(n-1, 0)/chunk.Size
	if last >= img.chunks || n == 0 || (last-first)*chunk.Size+img.chunkLen(last) != n {
		return 0, fmt.Errorf("image %s: deliver chunk %d: %d bytes, not whole chunks of the image", img.name, first, n)
	}
	return last, nil
}

// chunkLen is the length of chunk c: the chunk size, but for a short last chunk of the image.
func (img *Image) chunkLen(c int64) int64 {
	_, n := img.chunkSpan(c)
	return n
}

// claimPending marks busy the first run of pending chunks in [from, last] and returns it as
// [lo, hi]; lo > hi when there is none.
func (img *Image) claimPending(from, last int64) (lo, hi int64, err error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.closed {
		return 0, -1, errClosed
	}
	lo = from
	for lo <= last && img.state[lo] != StatePending {
		lo++
	}
	for hi = lo; hi <= last && img.state[hi] == StatePending; hi++ {
		img.state[hi] = stateBusy
	}
	return lo, hi - 1, nil
}

// storeRun writes the claimed chunks [lo, hi] to the cache and makes them present, or pending
// again if the write fails.
func (img *Image) storeRun(lo, hi int64, data []byte) error {
	off, _ := img.chunkSpan(lo)
	_, err := img.cache.WriteAt(data, off)
	img.mu.Lock()
	defer img.mu.Unlock()
	for c := lo; c <= hi; c++ {
		if err != nil {
			img.setLocked(c, StatePending, StatePending)
			continue
		}
		img.setLocked(c, StatePending, StatePresent)
		img.events.chunk(kindFetched, img.name, c)
	}
	if err != nil {
		return fmt.Errorf("image %s: cache chunks %d-%d: %w", img.name, lo, hi, err)
	}
	img.stats.chunksFetched.Add(hi - lo + 1)
	return nil
}

// setLocked ends a change of chunk c that began in state from (it has been busy since): it
// sets state to, queues the chunk for Sync if cached, and wakes its waiters.
func (img *Image) setLocked(c int64, from, to State) {
	img.state[c] = to
	if from == StatePending && to != StatePending {
		img.stats.pending.Add(-1)
	}
	if to.cached() {
		img.dirty = append(img.dirty, dirtyChunk{c, to})
		if !from.cached() {
			img.stats.present.Add(1)
		}
	}
	if ch, ok := img.waiters[c]; ok {
		close(ch)
		delete(img.waiters, c)
	}
}

// WriteAt writes p at off, copy-on-write into the cache. A partial write to a chunk that is not
// cached yet first fills the rest of the chunk from the base, zeros or (for a pending chunk,
// demanded and awaited) the overlay. The base is never written.
func (img *Image) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > img.size {
		return 0, fmt.Errorf("image %s: write %d bytes at %d: beyond the image's %d bytes", img.name, len(p), off, img.size)
	}
	if len(p) == 0 {
		return 0, nil
	}
	img.writeMu.Lock()
	defer img.writeMu.Unlock()
	first, last := off/chunk.Size, (off+int64(len(p))-1)/chunk.Size
	img.events.io(img.name, true, off, len(p))
	for c := first; c <= last; c++ {
		cOff, cLen := img.chunkSpan(c)
		lo, hi := max(off, cOff), min(off+int64(len(p)), cOff+cLen)
		if err := img.writeChunk(ctx, c, p[lo-off:hi-off], lo-cOff); err != nil {
			return 0, err
		}
	}
	img.stats.bytesWritten.Add(int64(len(p)))
	img.stats.chunksWritten.Add(last - first + 1)
	return len(p), nil
}

func (img *Image) writeChunk(ctx context.Context, c int64, data []byte, within int64) error {
	_, cLen := img.chunkSpan(c)
	full := within == 0 && int64(len(data)) == cLen
	if !full {
		// The rest of the chunk must be readable before it can be merged.
		if err := img.waitReadable(ctx, c, c); err != nil {
			return err
		}
	}
	img.mu.Lock()
	img.touchLocked(c, img.state[c] == stateBusy)
	for img.state[c] == stateBusy { // a delivery in flight; full writes must not race it
		ch, ok := img.waiters[c]
		if !ok {
			ch = make(chan struct{})
			img.waiters[c] = ch
		}
		img.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		img.mu.Lock()
	}
	was := img.state[c]
	img.state[c] = stateBusy
	if !bitGet(img.modified, c) {
		bitSet(img.modified, c)
		img.events.chunk(kindModified, img.name, c)
	}
	img.mu.Unlock()

	err := img.writeCache(c, was, data, within, full)
	img.mu.Lock()
	defer img.mu.Unlock()
	switch {
	case err == nil:
		img.setLocked(c, was, StateModified)
	case was.cached():
		// The cache may hold part of the write now: the chunk is no longer the overlay's.
		img.setLocked(c, was, StateModified)
	default:
		img.setLocked(c, was, was)
	}
	if err != nil {
		return fmt.Errorf("image %s: write chunk %d: %w", img.name, c, err)
	}
	return nil
}

// writeCache puts the VM's write to chunk c, whose state was was, into the cache file.
func (img *Image) writeCache(c int64, was State, data []byte, within int64, full bool) error {
	cOff, cLen := img.chunkSpan(c)
	if was.cached() {
		// Once the VM's bytes are in the cache, no durable record may call them the
		// overlay's: only the first write to a present chunk pays for this fdatasync (a
		// modified chunk whose downgrade failed before is tried again; otherwise it is free).
		if err := img.presence.downgrade(c); err != nil {
			return err
		}
	}
	if full || was.cached() {
		// The cache holds the whole chunk already, or the write covers it.
		_, err := img.cache.WriteAt(data, cOff+within)
		return err
	}
	buf := make([]byte, cLen)
	if was == StateBase {
		if _, err := img.base.ReadAt(buf, cOff); err != nil {
			return err
		}
	}
	copy(buf[within:], data)
	_, err := img.cache.WriteAt(buf, cOff)
	return err
}

// stop refuses further requests and wakes waiting readers, which then get errClosed. The
// files stay open so that what is cached can still be made durable.
func (img *Image) stop() {
	img.mu.Lock()
	defer img.mu.Unlock()
	img.closed = true
	for c, ch := range img.waiters {
		close(ch)
		delete(img.waiters, c)
	}
}

// close stops the image, syncs and closes its files.
func (img *Image) close() error {
	img.stop()
	return errors.Join(img.Sync(), img.closeFiles())
}

func (img *Image) closeFiles() error {
	var errs []error
	if img.base != nil {
		errs = append(errs, img.base.Close())
	}
	if img.cache != nil {
		errs = append(errs, img.cache.Close())
	}
	if img.presence != nil {
		errs = append(errs, img.presence.Close())
	}
	return errors.Join(errs...)
}
