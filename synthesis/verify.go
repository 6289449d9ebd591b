package synthesis

import (
	"cmp"
	"slices"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/overlay"
)

// ExpectedDigests returns, for each image of the overlay, the cloudletfs ImageConfig.Expected
// hook: the digest the overlay pins for each chunk it supplies (stored in a blob, a copy of
// another stored chunk, or a base chunk from another place), and false for the chunks it does
// not supply (zero chunks, and chunks left as the base has them). With it, a reused cache's
// present chunks are checked before they are served. r's digest table must be loaded.
func ExpectedDigests(r *overlay.Reader) []func(c int64) (chunk.Digest, bool) {
	ix := r.Index
	hooks := make([]func(int64) (chunk.Digest, bool), len(ix.Images))
	for i := range ix.Images {
		im := uint8(i)
		lo, _ := slices.BinarySearchFunc(ix.Chunks, im, func(c overlay.Chunk, im uint8) int { return cmp.Compare(c.Image, im) })
		hi, _ := slices.BinarySearchFunc(ix.Chunks, im+1, func(c overlay.Chunk, im uint8) int { return cmp.Compare(c.Image, im) })
		entries := ix.Chunks[lo:hi]
		hooks[i] = func(c int64) (chunk.Digest, bool) {
			j, found := slices.BinarySearchFunc(entries, c, func(e overlay.Chunk, c int64) int { return cmp.Compare(e.Index, c) })
			if !found {
				return chunk.Digest{}, false
			}
			return r.ChunkDigest(lo + j)
		}
	}
	return hooks
}
