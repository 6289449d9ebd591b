package overlay

import "github.com/cloudlet/cloudlet/chunk"

// Bounds derived from the format's limits. An overlay is attacker input: every length it
// claims is checked against one of these before anything is allocated for it, and what is
// allocated grows with the bytes that really arrive.

// readRun is the most a reader asks of the file at once, and the most it allocates ahead of
// the bytes that arrived. A few MiB: one range request covers a whole blob or a small index,
// and a length that the file does not hold costs at most one run.
const readRun = 4 << 20

// compressBound is the most bytes that raw bytes take once compressed by either codec. zstd
// and xz both fall back to stored blocks for incompressible data, at a cost of a few bytes per
// block (zstd: 3 per 128 KiB; xz: 3 per 64 KiB) plus their frame or stream headers and
// trailers (zstd: under 32 bytes; xz: at most about 1.1 KiB, most of it a block header that
// may be 1 KiB). raw/128 + 4 KiB covers both with room to spare.
func compressBound(raw int64) int64 { return raw + raw>>7 + 4<<10 }

// xzDictFloor is the dictionary an xz blob may always ask for, whatever its size: the xz
// writer's default (8 MiB), which is what this package writes.
const xzDictFloor = 8 << 20

// xzDictMax is the largest dictionary an xz blob may ask for: a dictionary larger than the
// largest blob is never of use.
const xzDictMax = MaxBlobRaw

// Worst-case sizes of index fields in bytes (varints take at most 10), used to bound the index
// of an overlay for known images.
const (
	maxVarint     = 10
	maxBlobEntry  = 3*maxVarint + chunk.DigestSize
	maxChunkEntry = 1 + maxVarint + 1 + 2*maxVarint + chunk.DigestSize
	maxIndexHead  = 32 + 2*maxVarint + 1 + MaxImages*(2*maxVarint+MaxNameLen) + maxVarint + MaxConfigLen +
		2*maxBlobEntry + 4*maxVarint
)

// chunkCapacity is how many chunks the images hold: no index lists more chunk entries, and,
// since each blob holds at least one chunk, no more blobs.
func chunkCapacity(images []Image) int64 {
	var n int64
	for _, im := range images {
		n += chunk.Count(im.Size)
	}
	return n
}

// indexRawBound is the largest uncompressed index an overlay for these images can have: every
// chunk listed, stored in a blob of its own, and prefetched.
func indexRawBound(images []Image) int64 {
	n := chunkCapacity(images)
	return min(MaxIndexRaw, maxIndexHead+n*(maxChunkEntry+maxBlobEntry+maxVarint))
}
