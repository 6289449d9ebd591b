package synthesis

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// TestWindow: reads inside the prefetched range are served from its one request as its bytes
// arrive; the buffer is dropped once every byte was read out of it, and later reads, like
// reads outside it, go to the origin.
func TestWindow(t *testing.T) {
	const start, end = 16 << 10, 512 << 10
	data, s, w := prefetchingWindow(t, 1<<20, 0, 8<<20, start, end)
	ctx := context.Background()

	read := func(off, n int64) {
		t.Helper()
		p := make([]byte, n)
		last := 0
		err := w.ReadAtProgress(ctx, p, off, func(k int) {
			if k < last {
				t.Errorf("progress went back from %d to %d", last, k)
			}
			last = k
		})
		if err != nil {
			t.Fatal(err)
		}
		if last != len(p) || !bytes.Equal(p, data[off:off+n]) {
			t.Fatalf("read %d+%d: wrong bytes or progress %d", off, n, last)
		}
	}
	for off := int64(start); off < end; off += 100 << 10 {
		read(off, min(100<<10, end-off))
	}
	if got := s.Requests.Load(); got != 2 {
		t.Fatalf("%d requests for reads inside the window, want 2 (probe, window)", got)
	}
	w.mu.Lock()
	released := w.buf == nil
	w.mu.Unlock()
	if !released {
		t.Fatal("the window kept its buffer after every byte was read out of it")
	}
	read(start, 4096) // after the release: from the origin
	read(end, 64<<10) // outside: from the origin
	if got := s.Requests.Load(); got != 4 {
		t.Fatalf("%d requests, want 4", got)
	}
	if got, want := w.BytesRead(), int64(end-start+4096+64<<10); got != want {
		t.Fatalf("BytesRead %d, want %d", got, want)
	}
}

// TestWindowDemandAhead: a read the VM waits for, far ahead of the stream, gets a request of
// its own instead of waiting for the stream to come to it; one just ahead waits for the
// stream. Either way each byte is read once, so the buffer is still dropped at the end.
func TestWindowDemandAhead(t *testing.T) {
	const start, end = 16 << 10, 4 << 20
	// 1 MB/s: the stream reaches the far read only after about 3.5 s.
	data, s, w := prefetchingWindow(t, 4<<20, 10*time.Millisecond, 1<<20, start, end)
	ctx := context.Background()

	read := func(off, n int64, demand bool) time.Duration {
		t.Helper()
		p := make([]byte, n)
		t0 := time.Now()
		var err error
		if demand {
			err = w.ReadDemand(ctx, p, off, func(int) {})
		} else {
			err = w.ReadAtProgress(ctx, p, off, func(int) {})
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, data[off:off+n]) {
			t.Fatalf("read %d+%d: wrong bytes", off, n)
		}
		return time.Since(t0)
	}
	read(start, 64<<10, false) // the stream is flowing, and its pace known
	time.Sleep(100 * time.Millisecond)
	const far = 3 << 20
	if took := read(far, 64<<10, true); took > time.Second {
		t.Fatalf("a demand 3 MiB ahead of a 1 MB/s stream took %v: it waited for the stream", took)
	}
	if got := s.Requests.Load(); got != 3 {
		t.Fatalf("%d requests, want 3 (probe, window, the far demand)", got)
	}
	// Just ahead of the stream: waits for it, no request of its own.
	w.mu.Lock()
	next := w.start + int64(w.filled)
	w.mu.Unlock()
	read(next, 4<<10, true)
	if got := s.Requests.Load(); got != 3 {
		t.Fatalf("%d requests after a demand just ahead of the stream, want still 3", got)
	}
	// The rest, as the fetcher's stream reads it.
	for off := int64(start + 64<<10); off < end; {
		n := min(int64(256<<10), end-off)
		switch {
		case off < next && off+n > next:
			n = next - off
		case off == next:
			n = 4 << 10
		case off < far && off+n > far:
			n = far - off
		case off == far:
			off += 64 << 10
			continue
		}
		if off != next {
			read(off, n, false)
		}
		off += n
	}
	w.mu.Lock()
	released := w.buf == nil
	w.mu.Unlock()
	if !released {
		t.Fatal("the window kept its buffer after every byte was read once, some by a demand of their own")
	}
}

// TestWindowDemandAheadBounded: demands ahead of the stream ask the origin for bytes the stream
// brings too, but no more than a 32nd of the window: past that, they wait for the stream.
func TestWindowDemandAheadBounded(t *testing.T) {
	const start, end = 16 << 10, 4 << 20 // a 32nd: 127.5 KiB
	_, s, w := prefetchingWindow(t, 4<<20, 10*time.Millisecond, 1<<20, start, end)
	ctx := context.Background()
	if err := w.ReadAtProgress(ctx, make([]byte, 64<<10), start, func(int) {}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the stream's pace is known
	demand := func(off int64) {
		t.Helper()
		if err := w.ReadDemand(ctx, make([]byte, 64<<10), off, func(int) {}); err != nil {
			t.Fatal(err)
		}
	}
	demand(1 << 20) // 64 KiB asked again: within the bound
	if got := s.Requests.Load(); got != 3 {
		t.Fatalf("%d requests, want 3 (probe, window, the first far demand)", got)
	}
	demand(3 << 20) // 128 KiB would pass the bound: this one waits for the stream
	if got := s.Requests.Load(); got != 3 {
		t.Fatalf("%d requests after a second far demand, want still 3: it passes the bound on bytes asked twice", got)
	}
}

// prefetchingWindow serves size bytes of a pattern over a shaped link and returns them, the
// server, and a window that streams [start, end) of them; both end with the test.
func prefetchingWindow(t *testing.T, size int, latency time.Duration, bytesPerSecond int64, start, end int64) ([]byte, *origin.ShapedServer, *window) {
	t.Helper()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	s := origin.NewShapedServer(data)
	t.Cleanup(s.Close)
	s.Shape(latency, bytesPerSecond)
	ctx := context.Background()
	o, err := origin.Open(ctx, s.URL(), origin.HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := newWindow(ctx, o, func(p overlay.Plan) int64 { return p.ResumeEnd })
	t.Cleanup(func() { w.Close() })
	w.prefetch(overlay.Plan{First: start, IndexEnd: start, ResumeEnd: end})
	return data, s, w
}
