package synthesis

import (
	"context"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/cloudletfs"
)

// TestBulkAfterBytes: the switch to bulk streaming comes once the VM has demanded a fixed
// amount of the overlay, whatever the blob size: eight demanded blobs of 64 KiB are not "most
// of the overlay", eight of 1 MiB are what the switch was measured with.
func TestBulkAfterBytes(t *testing.T) {
	store, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := base.CommitTiny(t, store, "tiny")
	const n, ws = 4096, 256 // 16 MiB of incompressible chunks, a 1 MiB working set
	for _, tc := range []struct {
		name     string
		restBlob int
		demands  int
		wantBulk bool
	}{
		{"8 blobs of 1 MiB", 1 << 20, 8, true},
		{"8 blobs of 64 KiB", 64 << 10, 8, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := testOverlayBlobs(t, b, n, ws, tc.restBlob)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r, mem := startFetch(t, ctx, b, path, Options{EarlyStart: true})
			// Demand one chunk of each blob from the last one back, each after the one before
			// is in, so that every demand is a blob of its own.
			per := int64(tc.restBlob / 4096)
			for i := range tc.demands {
				c := int64(n-1) - int64(i)*per
				r.fetcher.Demand("memory", c, cloudletfs.PriorityDemand)
				for mem.State(c) != cloudletfs.StatePresent {
					select {
					case <-r.fetcher.Failed():
						t.Fatal(r.fetcher.Err())
					case <-ctx.Done():
						t.Fatalf("chunk %d not in within a minute", c)
					case <-time.After(time.Millisecond):
					}
				}
			}
			r.fetcher.mu.Lock()
			bulk, demanded := r.fetcher.bulk, r.fetcher.demanded
			r.fetcher.mu.Unlock()
			// (A demanded blob that the background fetch brought first does not count.)
			if bulk != (demanded >= bulkAfter) {
				t.Errorf("%d bytes demanded: bulk %v, want it once %d bytes are", demanded, bulk, bulkAfter)
			}
			if bulk != tc.wantBulk {
				t.Errorf("after %d demanded blobs of %d bytes: bulk %v, want %v", tc.demands, tc.restBlob, bulk, tc.wantBulk)
			}
		})
	}
}
