package cloudletfs

import (
	"context"
	"fmt"
	"sync"
)

// ChunkEvent is the first access, modification or fetch of one chunk.
type ChunkEvent struct {
	UnixNano int64  `json:"t"`
	Image    string `json:"image"`
	Chunk    int64  `json:"chunk"`
}

func (e ChunkEvent) line() string {
	return fmt.Sprintf("%d.%06d %s %d\n", e.UnixNano/1e9, e.UnixNano%1e9/1e3, e.Image, e.Chunk)
}

// IOEvent is one read or write request on an image.
type IOEvent struct {
	UnixNano int64
	Image    string
	Write    bool
	Offset   int64
	Length   int
}

func (e IOEvent) line() string {
	op := "read"
	if e.Write {
		op = "write"
	}
	return fmt.Sprintf("%d.%06d %s %s %d+%d\n", e.UnixNano/1e9, e.UnixNano%1e9/1e3, e.Image, op, e.Offset, e.Length)
}

// eventLog is an append-only list that readers follow live. With a limit, the oldest half is
// dropped when it is reached, and a reader that fell behind is told how many it missed; the
// chunk logs need no limit, since each chunk enters them at most once.
type eventLog[T interface{ line() string }] struct {
	limit int // 0: unbounded

	mu      sync.Mutex
	events  []T
	dropped int           // events before events[0]
	changed chan struct{} // closed and replaced on each append, and at close
	closed  bool
}

func newEventLog[T interface{ line() string }](limit int) *eventLog[T] {
	return &eventLog[T]{limit: limit, changed: make(chan struct{})}
}

func (l *eventLog[T]) add(e T) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.events = append(l.events, e)
	if l.limit > 0 && len(l.events) > l.limit {
		half := len(l.events) / 2
		l.events = append(l.events[:0:0], l.events[half:]...)
		l.dropped += half
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

// snapshot returns a copy of all events kept.
func (l *eventLog[T]) snapshot() []T {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]T(nil), l.events...)
}

// close ends every follower's stream.
func (l *eventLog[T]) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.changed)
	}
}

// follower reads an eventLog from its start as text, blocking for new events.
type follower[T interface{ line() string }] struct {
	log  *eventLog[T]
	next int    // absolute index of the next event to render
	buf  []byte // rendered but not yet read
}

// read fills p with whole or partial lines, waiting for at least one event unless the log is
// closed (then it returns 0: end of stream).
func (f *follower[T]) read(ctx context.Context, p []byte) (int, error) {
	for len(f.buf) == 0 {
		l := f.log
		l.mu.Lock()
		if f.next < l.dropped {
			f.buf = fmt.Appendf(f.buf, "# %d events dropped\n", l.dropped-f.next)
			f.next = l.dropped
		}
		for _, e := range l.events[f.next-l.dropped:] {
			f.buf = append(f.buf, e.line()...)
			f.next++
			if len(f.buf) >= len(p) {
				break
			}
		}
		closed, changed := l.closed, l.changed
		l.mu.Unlock()
		if len(f.buf) > 0 {
			break
		}
		if closed {
			return 0, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-changed:
		}
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}
