package overlay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/cloudlet/cloudlet/chunk"
)

func sampleIndex() *Index {
	ix := &Index{ChunkSize: chunk.Size, Codec: CodecZstd, Config: []byte(`{}`),
		Images:   []Image{{Name: "disk", Size: 10 * chunk.Size}, {Name: "memory", Size: 8 * chunk.Size}},
		Devstate: Blob{Offset: 0, Length: 10, Raw: 20},
		Blobs:    []Blob{{Offset: 10, Length: 100, Raw: 2 * chunk.Size}},
		Chunks: []Chunk{
			{Image: 0, Index: 1, Kind: KindZero},
			{Image: 0, Index: 2, Kind: KindBlob, Blob: 0, Offset: 0},
			{Image: 1, Index: 0, Kind: KindBase, BaseImage: 0, BaseIndex: 3},
			{Image: 1, Index: 5, Kind: KindSelf, Self: 1},
			{Image: 1, Index: 7, Kind: KindBlob, Blob: 0, Offset: chunk.Size},
		},
		Prefetch:        []uint32{4, 1},
		WorkingSetBlobs: 1,
	}
	ix.BaseID[0] = 7
	return ix
}

func TestIndexRoundTrip(t *testing.T) {
	ix := sampleIndex()
	b := encodeIndex(ix)
	got, err := decodeIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(encodeIndex(got), b) {
		t.Fatal("re-encoded index differs")
	}
}

// TestAbsurdCounts: counts far beyond what the bytes can hold are refused before any
// allocation.
func TestAbsurdCounts(t *testing.T) {
	head := func(images uint64) []byte {
		b := make([]byte, 32)
		b = binary.AppendUvarint(b, chunk.Size)
		b = append(b, byte(CodecZstd))
		return binary.AppendUvarint(b, images)
	}
	ix := sampleIndex()
	ix.Chunks, ix.Prefetch, ix.WorkingSetBlobs, ix.Blobs = nil, nil, 0, nil
	full := encodeIndex(ix)
	// full ends with four zero counts (blobs, chunks, prefetch, working set): keep the blob
	// count and put an absurd chunk count after it.
	withChunks := func(n uint64) []byte {
		return binary.AppendUvarint(bytes.Clone(full[:len(full)-3]), n)
	}
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"images", head(1 << 40), "image count is 1099511627776, limit 4"},
		{"chunks that cannot fit", withChunks(1 << 27), "does not fit"},
		{"chunks beyond the limit", withChunks(1 << 40), "limit"},
	}
	for _, tc := range tests {
		_, err := decodeIndex(tc.b)
		var ce *CorruptError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a CorruptError mentioning %q", tc.name, err, tc.want)
		}
	}
}

func TestIndexValidation(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Index)
		want   string
	}{
		{"out of order", func(ix *Index) { ix.Chunks[0], ix.Chunks[1] = ix.Chunks[1], ix.Chunks[0] }, "not in order"},
		{"chunk beyond the image", func(ix *Index) { ix.Chunks[4].Index = 8 }, "beyond memory"},
		{"self reference to a non-stored chunk", func(ix *Index) { ix.Chunks[3].Self = 0 }, "self reference"},
		{"blob offset out of range", func(ix *Index) { ix.Chunks[4].Offset = 2 * chunk.Size }, "out of range"},
		{"prefetch of a zero chunk", func(ix *Index) { ix.Prefetch[0] = 0 }, "prefetch entry"},
		{"gap between blobs", func(ix *Index) { ix.Blobs[0].Offset = 11 }, "does not follow"},
		{"unknown kind", func(ix *Index) { ix.Chunks[0].Kind = 9 }, "unknown kind"},
	}
	for _, tc := range tests {
		ix := sampleIndex()
		tc.modify(ix)
		if err := ix.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

// FuzzDecodeIndex: no input panics or hangs the parser, and whatever it accepts re-encodes to
// the same bytes.
func FuzzDecodeIndex(f *testing.F) {
	f.Add(encodeIndex(sampleIndex()))
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, err := decodeIndex(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeIndex(ix), b) {
			t.Fatalf("accepted index does not re-encode to its bytes")
		}
	})
}

// FuzzOpen: a whole file of junk (header included) is refused cleanly.
func FuzzOpen(f *testing.F) {
	h := header{version: Version, indexLen: 5, indexRaw: 10}
	f.Add(append(h.encode(), 1, 2, 3, 4, 5))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Open(bytes.NewReader(b), int64(len(b)))
		if err == nil {
			r.Close()
		}
	})
}
