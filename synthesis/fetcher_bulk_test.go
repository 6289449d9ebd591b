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

// recordingOrigin notes every range asked of the origin under it, in the order asked.
type recordingOrigin struct {
	origin.Origin
	mu     sync.Mutex
	ranges [][2]int64 // guarded by mu: offset, length
}

func (o *recordingOrigin) ReadAt(ctx context.Context, p []byte, off int64) error {
	return o.ReadAtProgress(ctx, p, off, func(int) {})
}

func (o *recordingOrigin) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) error {
	o.mu.Lock()
	o.ranges = append(o.ranges, [2]int64{off, int64(len(p))})
	o.mu.Unlock()
	return origin.ReadProgress(ctx, o.Origin, p, off, progress)
}

func (o *recordingOrigin) asked() [][2]int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([][2]int64(nil), o.ranges...)
}

// TestUnprofiledStreamsAtOnce: an overlay that records no working set streams in bulk from the
// start (its first background request asks for a whole stream range, not one blob), while a
// demand miss still jumps the queue with a request of its own; a profiled overlay still
// fetches what follows its working set blob by blob.
func TestUnprofiledStreamsAtOnce(t *testing.T) {
	store, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := base.CommitTiny(t, store, "tiny")
	const n = 4096 // 16 MiB of incompressible chunks in 1 MiB blobs
	for _, tc := range []struct {
		name     string
		ws       int // chunks in the working set
		minBlobs int // blobs the first background request asks for, at least
		maxBlobs int // and at most
	}{
		// A stream range (4 MiB): more than one blob.
		{name: "unprofiled", ws: 0, minBlobs: 2, maxBlobs: streamRange >> 20},
		// backgroundRun (512 KiB) holds less than one 1 MiB blob: one blob a request.
		{name: "profiled", ws: 1024, minBlobs: 1, maxBlobs: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := testOverlay(t, b, n, tc.ws)
			s := origin.NewShapedServer(mustRead(t, path))
			defer s.Close()
			s.Shape(20*time.Millisecond, 8<<20) // the whole overlay takes about 2 s
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
			firstBg := tc.ws / 256 // the first blob after the working set
			bgStart, _ := r.reader.BlobRange(firstBg)
			lastOff, lastLen := r.reader.BlobRange(lastBlob)
			var demanded bool
			var bg [][2]int64
			for _, a := range rec.asked() {
				switch {
				case a == [2]int64{lastOff, lastLen}:
					demanded = true
				case a[0] >= bgStart:
					bg = append(bg, a)
				}
			}
			if !demanded {
				t.Errorf("no request for the demanded blob %d alone (%d+%d); asked %v", lastBlob, lastOff, lastLen, rec.asked())
			}
			if len(bg) == 0 {
				t.Fatalf("no background request from blob %d on; asked %v", firstBg, rec.asked())
			}
			first := bg[0]
			if first[0] != bgStart {
				t.Errorf("first background request at %d, want %d (blob %d)", first[0], bgStart, firstBg)
			}
			blobs := 0
			for i := firstBg; i < len(ix.Blobs); i++ {
				if o, l := r.reader.BlobRange(i); o+l > first[0]+first[1] {
					break
				}
				blobs++
			}
			if blobs < tc.minBlobs || blobs > tc.maxBlobs {
				t.Errorf("first background request asked for %d bytes, %d blobs; want %d to %d blobs", first[1], blobs, tc.minBlobs, tc.maxBlobs)
			}
		})
	}
}
