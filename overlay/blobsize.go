package overlay

import "github.com/cloudlet/cloudlet/chunk"

// blobSizes settles m's blob sizes for an overlay of stored chunks whose first ws form the
// working set: the defaults for zero, whole chunks, and doubled (up to MaxBlobRaw) while the
// blobs would outnumber MaxBlobs. Small blobs after the working set would otherwise make an
// overlay of more than 256 GiB of chunks that no reader accepts.
func (m *Meta) blobSizes(stored, ws int) {
	if m.BlobRaw <= 0 {
		m.BlobRaw = DefaultBlobRaw
	}
	m.BlobRaw = max(chunk.Size, m.BlobRaw/chunk.Size*chunk.Size)
	if m.RestBlobRaw <= 0 {
		m.RestBlobRaw = min(m.BlobRaw, DefaultRestBlobRaw)
	}
	m.RestBlobRaw = max(chunk.Size, m.RestBlobRaw/chunk.Size*chunk.Size)
	ws = min(max(ws, 0), stored)
	for {
		wsBlobs, restBlobs := blobsFor(ws, m.BlobRaw), blobsFor(stored-ws, m.RestBlobRaw)
		switch {
		case wsBlobs+restBlobs <= MaxBlobs:
			return
		case restBlobs >= wsBlobs && m.RestBlobRaw < MaxBlobRaw:
			m.RestBlobRaw = min(2*m.RestBlobRaw, MaxBlobRaw)
		case m.BlobRaw < MaxBlobRaw:
			m.BlobRaw = min(2*m.BlobRaw, MaxBlobRaw)
		case m.RestBlobRaw < MaxBlobRaw:
			m.RestBlobRaw = min(2*m.RestBlobRaw, MaxBlobRaw)
		default:
			return // more chunks than any overlay can hold: the index check says so
		}
	}
}

// blobsFor is the most blobs that n chunks take in blobs of raw bytes.
func blobsFor(n, raw int) int {
	per := raw / chunk.Size
	return (n + per - 1) / per
}
