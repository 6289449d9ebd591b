package cloudletfs

import "fmt"

// Stats are one image's counters.
type Stats struct {
	Image         string
	BytesRead     int64
	BytesWritten  int64
	ChunksRead    int64
	ChunksWritten int64
	ChunksFetched int64
	DemandMisses  int64
	StallSeconds  float64
	ChunksPresent int64
	// ChunksPending are still to come from the overlay: neither delivered nor overwritten.
	ChunksPending int64
	ChunksTotal   int64
	// The overlay's chunks (pending in the plan when the image was opened) that the VM read
	// or wrote, once each, and those of them that were not local at their first touch: the
	// misses a working set should have prevented.
	OverlayTouched int64
	OverlayMissed  int64
}

// Stats returns the image's counters now.
func (img *Image) Stats() Stats {
	s := &img.stats
	return Stats{
		Image: img.name, BytesRead: s.bytesRead.Load(), BytesWritten: s.bytesWritten.Load(),
		ChunksRead: s.chunksRead.Load(), ChunksWritten: s.chunksWritten.Load(),
		ChunksFetched: s.chunksFetched.Load(), DemandMisses: s.demandMisses.Load(),
		StallSeconds: float64(s.stallNanos.Load()) / 1e9, ChunksPresent: s.present.Load(),
		ChunksPending: s.pending.Load(), ChunksTotal: img.chunks,
		OverlayTouched: s.overlayTouched.Load(), OverlayMissed: s.overlayMissed.Load(),
	}
}

// String renders the stats as "name value" lines, the format of stats/IMAGE.
func (s Stats) String() string {
	return fmt.Sprintf("bytes_read %d\nbytes_written %d\nchunks_read %d\nchunks_written %d\nchunks_fetched %d\n"+
		"demand_misses %d\nstall_seconds %.6f\nchunks_present %d\nchunks_pending %d\nchunks_total %d\noverlay_touched %d\noverlay_missed %d\n",
		s.BytesRead, s.BytesWritten, s.ChunksRead, s.ChunksWritten, s.ChunksFetched,
		s.DemandMisses, s.StallSeconds, s.ChunksPresent, s.ChunksPending, s.ChunksTotal, s.OverlayTouched, s.OverlayMissed)
}

// touchLocked counts the first touch of chunk c if the overlay holds it; waited says it was not
// local then.
func (img *Image) touchLocked(c int64, waited bool) {
	if img.overlay == nil || !bitGet(img.overlay, c) || bitGet(img.touched, c) {
		return
	}
	bitSet(img.touched, c)
	img.stats.overlayTouched.Add(1)
	if waited {
		img.stats.overlayMissed.Add(1)
	}
}
