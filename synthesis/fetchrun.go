package synthesis

// How one run of blobs travels: a range request whose blobs are verified and delivered as
// their bytes arrive.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// demandReader is an origin that serves reads the VM waits for ahead of the stream it reads
// ahead (the window).
type demandReader interface {
	ReadDemand(ctx context.Context, p []byte, off int64, progress func(n int)) error
}

// fetchRun reads blobs [first, end) with one range request, and verifies and delivers each
// blob as soon as its bytes are in, while the rest of the range is still arriving. tail is
// called once when the rest should take about as long as a request takes to answer. demand
// says the VM waits for the run.
func (f *Fetcher) fetchRun(ctx context.Context, first, end int, tail func(), demand bool) error {
	off, _ := f.r.BlobRange(first)
	lastOff, lastLen := f.r.BlobRange(end - 1)
	if buf, ok := f.r.Prefix(off, lastOff+lastLen-off); ok {
		tail()
		return f.deliverRun(first, end, off, buf)
	}
	buf := make([]byte, lastOff+lastLen-off)
	// The run's first bytes may have come with the index, in Open's first read (a small
	// index): only the rest is asked for, else the window, which streams from the end of that
	// read, would send all of buf to the origin again.
	head := copy(buf, f.r.PrefixHead(off, int64(len(buf))))
	if f.limit != nil {
		for n := len(buf) - head; n > 0; n -= f.limit.Burst() {
			if err := f.limit.WaitN(ctx, min(n, f.limit.Burst())); err != nil {
				return err
			}
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := runStream{f: f, next: first, end: end, off: off, buf: buf, tail: tail, start: time.Now()}
	progress := func(n int) {
		if s.err == nil {
			if s.err = s.progress(head + n); s.err != nil {
				cancel() // a corrupt blob ends the run at once
			}
		}
	}
	var err error
	if dr, ok := f.origin.(demandReader); ok && demand {
		err = dr.ReadDemand(ctx, buf[head:], off+int64(head), progress)
	} else {
		err = origin.ReadProgress(ctx, f.origin, buf[head:], off+int64(head), progress)
	}
	f.requests.Add(1)
	f.lap(&f.requestNs, s.start)
	if s.err != nil {
		return s.err
	}
	if err != nil {
		return fmt.Errorf("fetch blobs %d-%d: %w", first, end-1, err)
	}
	s.measure()
	return nil
}

// runStream is one run's range as it arrives: the blobs before next are delivered.
type runStream struct {
	f                 *Fetcher
	next, end         int
	off               int64
	buf               []byte
	tail              func()
	start, firstBytes time.Time
	firstN            int // bytes in at firstBytes
	tailed            bool
	err               error
}

// progress delivers every blob whose bytes are all in buf[:n], and calls tail once the rest
// of the range, at the rate seen so far, should arrive within the time the first bytes took.
func (s *runStream) progress(n int) error {
	now := time.Now()
	if s.firstBytes.IsZero() {
		s.firstBytes, s.firstN = now, n
	}
	for s.next < s.end {
		bo, bl := s.f.r.BlobRange(s.next)
		if bo+bl-s.off > int64(n) {
			break
		}
		if err := s.f.deliverRun(s.next, s.next+1, s.off, s.buf); err != nil {
			return err
		}
		s.next++
	}
	if !s.tailed {
		latency, streamed := s.firstBytes.Sub(s.start), now.Sub(s.firstBytes)
		left := len(s.buf) - n
		if left == 0 || streamed > 0 && time.Duration(float64(left)/float64(n)*float64(streamed)) <= latency {
			s.tailed = true
			s.tail()
		}
	}
	return nil
}

// measure notes, from a range that streamed, how many bytes the link moves in a round trip: its
// rate once the first bytes were in (the bytes after them over the time after them), times how
// long they took to come. A range that came in one piece says nothing about the rate.
func (s *runStream) measure() {
	streamed := time.Since(s.firstBytes)
	if s.firstBytes.IsZero() || streamed <= 0 || s.firstN >= len(s.buf) {
		return
	}
	latency := s.firstBytes.Sub(s.start)
	n := int64(float64(len(s.buf)-s.firstN) / streamed.Seconds() * latency.Seconds())
	s.f.mu.Lock()
	s.f.perRTT = n
	s.f.mu.Unlock()
}

// deliverRun verifies and delivers blobs [first, end) held in buf, which starts at file
// offset off.
func (f *Fetcher) deliverRun(first, end int, off int64, buf []byte) error {
	for b := first; b < end; b++ {
		bo, bl := f.r.BlobRange(b)
		t := time.Now()
		raw, err := f.r.DecodeBlob(uint32(b), buf[bo-off:bo-off+bl])
		f.lap(&f.decodeNs, t)
		if err != nil {
			return err // a corrupt blob is never delivered
		}
		if err := f.deliverBlob(uint32(b), raw); err != nil {
			return err
		}
	}
	return nil
}

// deliverBlob checks every chunk the blob feeds, then delivers them: a blob with one bad chunk
// delivers none. Both passes are timed whole, not per chunk, to keep the clock out of the loop.
func (f *Fetcher) deliverBlob(b uint32, raw []byte) error {
	ix := f.r.Index
	t := time.Now()
	for _, e := range f.users[b] {
		// The blob passed its own digest; once the digest table is in, each chunk is
		// checked against it too.
		if want, ok := f.r.ChunkDigest(e); ok && chunk.Sum(f.rawChunk(raw, e)) != want {
			c := ix.Chunks[e]
			return &overlay.CorruptError{Part: fmt.Sprintf("chunk %d of %s in blob %d", c.Index, ix.Images[c.Image].Name, b), Err: errors.New("digest mismatch")}
		}
	}
	t = f.lap(&f.verifyNs, t)
	f.storePut(b, raw)
	users := f.users[b]
	for i := 0; i < len(users); {
		j := i + 1
		for j < len(users) && f.sideBySide(users[j-1], users[j]) {
			j++
		}
		c := ix.Chunks[users[i]]
		lo, _ := f.r.InBlob(users[i])
		off, n := f.r.InBlob(users[j-1])
		hi := off + n
		if err := f.fs.Deliver(ix.Images[c.Image].Name, c.Index, raw[lo:hi]); err != nil {
			return err
		}
		i = j
	}
	f.lap(&f.writeNs, t)
	f.mu.Lock()
	f.state[b] = blobDone
	f.left--
	f.mu.Unlock()
	f.finishIfDone()
	return nil
}

// rawChunk is entry e's bytes in raw, its blob's decoded data.
func (f *Fetcher) rawChunk(raw []byte, e int) []byte {
	off, n := f.r.InBlob(e)
	return raw[off : off+n]
}

// sideBySide says whether entry b follows entry a both in their image and in the blob's raw
// data, so the two are delivered with one write. A blob holds its chunks in the order the VM
// touched them, which is mostly the image's order: the working set's runs average 7 chunks.
func (f *Fetcher) sideBySide(a, b int) bool {
	ca, cb := f.r.Index.Chunks[a], f.r.Index.Chunks[b]
	offA, nA := f.r.InBlob(a)
	offB, _ := f.r.InBlob(b)
	return ca.Image == cb.Image && cb.Index == ca.Index+1 && offB == offA+nA
}
