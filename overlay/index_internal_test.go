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
		Digests:  Blob{Offset: 110, Length: 2 * chunk.DigestSize, Raw: 2 * chunk.DigestSize},
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
	got, err := decodeIndex(b, nil)
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
	ix.Images[0].Size = MaxImageSize
	fullBig := encodeIndex(ix)
	// full ends with three zero counts (chunks, prefetch, working set): keep what comes before
	// (the blob count and the digest table) and put an absurd chunk count after it.
	withChunks := func(full []byte, n uint64) []byte {
		return binary.AppendUvarint(bytes.Clone(full[:len(full)-3]), n)
	}
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"images", head(1 << 40), "image count is 1099511627776, limit 4"},
		{"chunks that cannot fit", withChunks(fullBig, 1<<27), "does not fit"},
		{"chunks beyond the limit", withChunks(fullBig, 1<<40), "limit"},
		{"more chunks than the images hold", withChunks(full, 19), "chunk count 19 is more than the chunks the images hold (18)"},
	}
	for _, tc := range tests {
		_, err := decodeIndex(tc.b, nil)
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
		{"self reference from a short last chunk", func(ix *Index) {
			ix.Images[1].Size = 5*chunk.Size + 100 // chunk 5 of memory has 100 bytes
			ix.Chunks, ix.Prefetch, ix.Blobs[0].Raw = ix.Chunks[:4], []uint32{1}, chunk.Size
		}, "self reference 1 has another length"},
		{"self reference to a later chunk of no image", func(ix *Index) { ix.Chunks[3].Self = 4; ix.Chunks[4].Image = 9 }, "self reference 4"},
		{"blob offset out of range", func(ix *Index) { ix.Chunks[4].Offset = 2 * chunk.Size }, "out of range"},
		{"prefetch of a zero chunk", func(ix *Index) { ix.Prefetch[0] = 0 }, "prefetch entry"},
		{"gap between blobs", func(ix *Index) { ix.Blobs[0].Offset = 11 }, "does not follow"},
		{"unknown kind", func(ix *Index) { ix.Chunks[0].Kind = 9 }, "unknown kind"},
		{"blob longer than any compression of its raw bytes", func(ix *Index) { ix.Blobs[0].Length = compressBound(ix.Blobs[0].Raw) + 1 }, "blob 0 of 12353 compressed bytes for 8192 raw bytes"},
		{"blob beyond the raw limit", func(ix *Index) { ix.Blobs[0].Raw = MaxBlobRaw + 1 }, "blob 0 of 67108865 raw bytes"},
		{"blob bigger than its chunks", func(ix *Index) { ix.Blobs[0].Raw = 3 * chunk.Size }, "blob 0 holds 8192 bytes of chunks, but its raw size is 12288"},
		{"empty device state", func(ix *Index) { ix.Devstate.Raw = 0 }, "device state of 0 raw bytes"},
		{"device state longer than any compression of its raw bytes", func(ix *Index) { ix.Devstate.Length = 1 << 30 }, "device state of 1073741824 compressed bytes"},
		{"device state beyond its limit", func(ix *Index) { ix.Devstate.Raw = MaxDevstateRaw + 1 }, "device state of 67108865 raw bytes"},
	}
	for _, tc := range tests {
		ix := sampleIndex()
		tc.modify(ix)
		if err := ix.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
