package synthesis

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// recordingOrigin notes every range asked of the origin under it, in the order asked, with when
// it was asked and when it ended.
type recordingOrigin struct {
	origin.Origin
	mu     sync.Mutex
	ranges []askedRange // guarded by mu
}

type askedRange struct {
	off, n     int64
	start, end time.Time
}

func (o *recordingOrigin) ReadAt(ctx context.Context, p []byte, off int64) error {
	return o.ReadAtProgress(ctx, p, off, func(int) {})
}

func (o *recordingOrigin) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) error {
	o.mu.Lock()
	i := len(o.ranges)
	o.ranges = append(o.ranges, askedRange{off: off, n: int64(len(p)), start: time.Now()})
	o.mu.Unlock()
	err := origin.ReadProgress(ctx, o.Origin, p, off, progress)
	o.mu.Lock()
	o.ranges[i].end = time.Now()
	o.mu.Unlock()
	return err
}

func (o *recordingOrigin) asked() []askedRange {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]askedRange(nil), o.ranges...)
}

// TestUnprofiledStreamsAtOnce: with an overlay that records no working set, the fetcher keeps
// the link busy from the start: background requests chain (the next asked before the last
// ends) and do not pause while a demand miss is fetched, and that miss still jumps the queue
// with a request of its own. A profiled overlay still fetches what follows its working set one
// request at a time, pausing for demands. Until the VM has demanded bulkAfter blobs, either
// asks for one blob a request, unless (unprofiled) the link moves more than that in a round
// trip.
func TestUnprofiledStreamsAtOnce(t *testing.T) {
	store, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := base.CommitTiny(t, store, "tiny")
	const n = 4096 // 16 MiB of incompressible chunks, in 1 MiB blobs after the working set
	for _, tc := range []struct {
		name    string
		ws      int           // chunks in the working set
		rtt     time.Duration // the link's latency per request
		chained bool          // background requests overlap, and start while the demand is fetched
		multi   bool          // some background request asks for more than one blob
	}{
		{name: "unprofiled", ws: 0, rtt: 20 * time.Millisecond, chained: true},
		{name: "profiled", ws: 1024, rtt: 20 * time.Millisecond, chained: false},
		// 2.4 MB in a round trip: two blobs a request keep the link busy.
		{name: "unprofiled long round trip", ws: 0, rtt: 300 * time.Millisecond, chained: true, multi: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := testOverlayBlobs(t, b, n, tc.ws, 1<<20)
			s := origin.NewShapedServer(mustRead(t, path))
			defer s.Close()
			s.Shape(tc.rtt, 8<<20) // the whole overlay takes about 2 s
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			src, err := origin.Open(ctx, s.URL(), origin.HTTPOptions{})
			if err != nil {
				t.Fatal(err)
			}
			rec := &recordingOrigin{Origin: src}
			start := time.Now()
			r, mem := startFetch(t, ctx, b, "", Options{EarlyStart: true, Origin: rec})
			ix := r.reader.Index
			// The last chunk, in the last blob, is demanded; the one 1024 chunks before it,
			// in an earlier blob, comes with the background fetch.
			last, before := int64(n-1), int64(n-1-1024)
			lastBlob := int(ix.Chunks[r.fetcher.place[[2]int64{1, last}]].Blob)
			r.fetcher.Demand("memory", last, cloudletfs.PriorityDemand)

			var demandIn, beforeIn time.Duration
			for demandIn == 0 || beforeIn == 0 {
				select {
				case <-r.fetcher.Failed():
					t.Fatal(r.fetcher.Err())
				case <-ctx.Done():
					t.Fatal("the fetch did not complete within a minute")
				case <-time.After(5 * time.Millisecond):
				}
				if demandIn == 0 && mem.State(last) == cloudletfs.StatePresent {
					demandIn = time.Since(start)
				}
				if beforeIn == 0 && mem.State(before) == cloudletfs.StatePresent {
					beforeIn = time.Since(start)
				}
			}
			select {
			case <-r.fetcher.Complete():
			case <-r.fetcher.Failed():
				t.Fatal(r.fetcher.Err())
			case <-ctx.Done():
				t.Fatal("the fetch did not complete within a minute")
			}
			t.Logf("demanded chunk in after %v, chunk %d (streamed) after %v, complete after %v", demandIn, before, beforeIn, time.Since(start))
			if demandIn >= beforeIn {
				t.Errorf("demanded chunk %d in after %v, chunk %d before it in prefetch order after %v: want the demand first", last, demandIn, before, beforeIn)
			}

			// The fetcher's requests: those past the window's stream (probe, index, device
			// state and working set), in the order asked.
			firstBg := int(ix.WorkingSetBlobs) // the first blob after the working set
			bgStart, _ := r.reader.BlobRange(firstBg)
			lastOff, lastLen := r.reader.BlobRange(lastBlob)
			var demand *askedRange
			var bg []askedRange
			for _, a := range rec.asked() {
				switch {
				case a.off == lastOff && a.n == lastLen:
					demand = &a
				case a.off >= bgStart:
					bg = append(bg, a)
				}
			}
			if demand == nil {
				t.Fatalf("no request for the demanded blob %d alone (%d+%d)", lastBlob, lastOff, lastLen)
			}
			if len(bg) < 2 {
				t.Fatalf("%d background requests from blob %d on, want several", len(bg), firstBg)
			}
			if bg[0].off != bgStart {
				t.Errorf("first background request at %d, want %d (blob %d)", bg[0].off, bgStart, firstBg)
			}
			var overlaps, duringDemand int
			multi := false
			next := firstBg // the blob the next background request should start at
			for i, a := range bg {
				if i > 0 && a.start.Before(bg[i-1].end) {
					overlaps++
				}
				if a.start.After(demand.start) && a.start.Before(demand.end) {
					duringDemand++
				}
				end := next // blobs [next, end) are what a asked for
				for end < len(ix.Blobs) {
					if o, l := r.reader.BlobRange(end); o+l > a.off+a.n {
						break
					}
					end++
				}
				if o, _ := r.reader.BlobRange(next); a.off != o || end == next {
					t.Fatalf("background request %d asked for %d+%d, want whole blobs from blob %d (at %d)", i, a.off, a.n, next, o)
				}
				if a.n > streamRange {
					t.Errorf("background request %d asked for %d bytes, more than a stream range (%d)", i, a.n, streamRange)
				}
				multi = multi || end-next > 1
				if next = end; next == lastBlob {
					next++
				}
			}
			t.Logf("%d background requests, %d asked before the last ended, %d while the demand was fetched", len(bg), overlaps, duringDemand)
			if chained := overlaps > 0 && duringDemand > 0; chained != tc.chained {
				t.Errorf("%d background requests asked before the last ended, %d while the demand was fetched: want chained %v", overlaps, duringDemand, tc.chained)
			}
			if multi != tc.multi {
				t.Errorf("a background request for more than one blob: %v, want %v", multi, tc.multi)
			}
		})
	}
}
