package synthesis

import (
	"cmp"
	"slices"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/overlay"
)

// ExpectedDigests returns, for each image of the index, the cloudletfs ImageConfig.Expected
// hook: the digest the overlay pins for each chunk it supplies (stored in a blob, a copy of
// another stored chunk, or a base chunk from another place), and false for the chunks it does
// not supply (zero chunks, and chunks left as the base has them). With it, a reused cache's
// present chunks are checked before they are served. The index must have been read by
// overlay's reader, which checks that its chunks are in order.
func ExpectedDigests(ix *overlay.Index) []func(c int64) (chunk.Digest, bool) {
	hooks := make([]func(int64) (chunk.Digest, bool), len(ix.Images))
	for i := range ix.Images {
		im := uint8(i)
		lo, _ := slices.BinarySearchFunc(ix.Chunks, im, func(c overlay.Chunk, im uint8) int { return cmp.Compare(c.Image, im) })
		hi, _ := slices.BinarySearchFunc(ix.Chunks, im+1, func(c overlay.Chunk, im uint8) int { return cmp.Compare(c.Image, im) })
		entries := ix.Chunks[lo:hi]
		hooks[i] = func(c int64) (chunk.Digest, bool) {
			j, found := slices.BinarySearchFunc(entries, c, func(e overlay.Chunk, c int64) int { return cmp.Compare(e.Index, c) })
			if !found || entries[j].Kind == overlay.KindZero {
				return chunk.Digest{}, false
			}
			return entries[j].Digest, true
		}
	}
	return hooks
}
