package synthesis

import (
	"testing"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/overlay"
)

// TestExpectedDigests: every chunk the index supplies has its pinned digest, in the right
// image; zero chunks and chunks the index leaves to the base have none.
func TestExpectedDigests(t *testing.T) {
	d := func(s string) chunk.Digest { return chunk.Sum([]byte(s)) }
	ix := &overlay.Index{
		ChunkSize: chunk.Size,
		Images:    []overlay.Image{{Name: "disk", Size: 8 * chunk.Size}, {Name: "memory", Size: 4 * chunk.Size}},
		Chunks: []overlay.Chunk{
			{Image: 0, Index: 1, Kind: overlay.KindBlob, Digest: d("disk 1")},
			{Image: 0, Index: 3, Kind: overlay.KindZero},
			{Image: 0, Index: 7, Kind: overlay.KindSelf, Digest: d("disk 1")},
			{Image: 1, Index: 0, Kind: overlay.KindBase, BaseImage: 0, BaseIndex: 5, Digest: d("base 5")},
			{Image: 1, Index: 2, Kind: overlay.KindBlob, Digest: d("memory 2")},
		},
	}
	hooks := ExpectedDigests(ix)
	tests := []struct {
		image int
		c     int64
		want  string // "" for no digest
	}{
		{0, 0, ""}, {0, 1, "disk 1"}, {0, 2, ""}, {0, 3, ""}, {0, 7, "disk 1"},
		{1, 0, "base 5"}, {1, 1, ""}, {1, 2, "memory 2"}, {1, 3, ""},
	}
	for _, tt := range tests {
		got, ok := hooks[tt.image](tt.c)
		if ok != (tt.want != "") || ok && got != d(tt.want) {
			t.Errorf("image %d chunk %d: got %v %v, want %q", tt.image, tt.c, got, ok, tt.want)
		}
	}
}
