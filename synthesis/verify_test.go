package synthesis

import (
	"bytes"
	"context"
	"testing"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/overlay"
)

// TestExpectedDigests: every chunk the overlay supplies has its pinned digest, in the right
// image; zero chunks and chunks the overlay leaves to the base have none.
func TestExpectedDigests(t *testing.T) {
	data := func(s string) []byte { return append([]byte(s), make([]byte, chunk.Size-len(s))...) }
	d := func(s string) chunk.Digest { return chunk.Sum(data(s)) }
	images := []overlay.Image{{Name: "disk", Size: 8 * chunk.Size}, {Name: "memory", Size: 4 * chunk.Size}}
	entries := []overlay.Entry{
		{Image: 0, Index: 1, Kind: overlay.KindBlob, Digest: d("disk 1")},
		{Image: 0, Index: 3, Kind: overlay.KindZero},
		{Image: 0, Index: 7, Kind: overlay.KindSelf, SameImage: 0, SameIndex: 1, Digest: d("disk 1")},
		{Image: 1, Index: 0, Kind: overlay.KindBase, BaseImage: 0, BaseIndex: 5, Digest: d("base 5")},
		{Image: 1, Index: 2, Kind: overlay.KindBlob, Digest: d("memory 2")},
	}
	read := func(im uint8, i int64) ([]byte, error) {
		return data(map[[2]int64]string{{0, 1}: "disk 1", {1, 2}: "memory 2"}[[2]int64{int64(im), i}]), nil
	}
	var file bytes.Buffer
	m := overlay.Meta{Images: images, Config: []byte(`{}`), Codec: overlay.CodecZstd}
	if _, err := overlay.Write(context.Background(), &file, t.TempDir(), m, []byte("dev"), entries, nil, read); err != nil {
		t.Fatal(err)
	}
	r, err := overlay.Open(bytes.NewReader(file.Bytes()), int64(file.Len()), overlay.Expect{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	hooks := ExpectedDigests(r)
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
