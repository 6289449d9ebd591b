package synthesis

import (
	"bytes"
	"context"
	"testing"

	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// TestWindow: reads inside the prefetched range are served from its one request as its bytes
// arrive; the buffer is dropped once every byte was read out of it, and later reads, like
// reads outside it, go to the origin.
func TestWindow(t *testing.T) {
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	s := origin.NewShapedServer(data)
	defer s.Close()
	s.Shape(0, 8<<20)
	ctx := context.Background()
	o, err := origin.Open(ctx, s.URL(), origin.HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := newWindow(ctx, o, func(p overlay.Plan) int64 { return p.ResumeEnd })
	defer w.Close()
	const start, end = 16 << 10, 512 << 10
	w.prefetch(overlay.Plan{First: start, IndexEnd: start, ResumeEnd: end})

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
