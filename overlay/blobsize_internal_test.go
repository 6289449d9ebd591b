package overlay

import "testing"

// TestBlobSizes: defaults, whole chunks, and blobs grown until an overlay of many chunks
// stays within MaxBlobs (working-set blobs kept while the others can grow).
func TestBlobSizes(t *testing.T) {
	for _, tc := range []struct {
		name             string
		m                Meta
		stored, ws       int
		wantWS, wantRest int
	}{
		{"defaults", Meta{}, 1000, 100, DefaultBlobRaw, DefaultRestBlobRaw},
		{"small blobs set", Meta{BlobRaw: 2 * 4096}, 1000, 10, 2 * 4096, 2 * 4096},
		{"whole chunks", Meta{BlobRaw: 5000, RestBlobRaw: 9000}, 1000, 10, 4096, 8192},
		{"rest grows", Meta{}, 1 << 28, 1000, DefaultBlobRaw, 2 << 20},
		{"working set too", Meta{}, 1<<28 + 1024, 1<<28 + 1024, 2 << 20, DefaultRestBlobRaw},
		{"more than any overlay", Meta{}, 1 << 35, 0, MaxBlobRaw, MaxBlobRaw},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.m
			m.blobSizes(tc.stored, tc.ws)
			if m.BlobRaw != tc.wantWS || m.RestBlobRaw != tc.wantRest {
				t.Errorf("blob sizes: got %d and %d, want %d and %d", m.BlobRaw, m.RestBlobRaw, tc.wantWS, tc.wantRest)
			}
			if n := blobsFor(tc.ws, m.BlobRaw) + blobsFor(tc.stored-tc.ws, m.RestBlobRaw); n > MaxBlobs && tc.name != "more than any overlay" {
				t.Errorf("%d blobs, more than %d", n, MaxBlobs)
			}
		})
	}
}
