package overlay

import (
	"bytes"
	"context"
	"testing"

	"github.com/cloudlet/cloudlet/chunk"
)

// FuzzDecodeIndex: no input panics or hangs the parser, and whatever it accepts re-encodes to
// the same bytes.
func FuzzDecodeIndex(f *testing.F) {
	f.Add(encodeIndex(sampleIndex()))
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, err := decodeIndex(b, nil)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeIndex(ix), b) {
			t.Fatalf("accepted index does not re-encode to its bytes")
		}
	})
}

// fuzzImages are the images of the base FuzzOpen expects, as a synthesis would.
var fuzzImages = []Image{{Name: "disk", Size: 40*chunk.Size + 100}, {Name: "memory", Size: 32 * chunk.Size}}

// fuzzOverlay is a small valid overlay for fuzzImages, stored in a few blobs.
func fuzzOverlay(f *testing.F, codec Codec) []byte {
	f.Helper()
	data := func(im uint8, i int64) []byte {
		b := make([]byte, min(chunk.Size, fuzzImages[im].Size-i*chunk.Size))
		for k := range b[:len(b)/2] {
			b[k] = byte(int64(k)*7 + i + int64(im))
		}
		return b
	}
	var entries []Entry
	for i := int64(0); i < 6; i++ {
		entries = append(entries, Entry{Image: 0, Index: 3 * i, Kind: KindBlob, Digest: chunk.Sum(data(0, 3*i))})
	}
	entries = append(entries, Entry{Image: 1, Index: 2, Kind: KindZero},
		Entry{Image: 1, Index: 5, Kind: KindBase, BaseImage: 0, BaseIndex: 1, Digest: chunk.Sum(data(0, 1))},
		Entry{Image: 1, Index: 7, Kind: KindSelf, SameImage: 0, SameIndex: 3, Digest: chunk.Sum(data(0, 3))})
	var out bytes.Buffer
	_, err := Write(context.Background(), &out, f.TempDir(), Meta{Images: fuzzImages, Config: []byte(`{}`), Codec: codec,
		BlobRaw: 2 * chunk.Size, WorkingSet: 2}, []byte("device state"), entries, []int{4, 1},
		func(im uint8, i int64) ([]byte, error) { return data(im, i), nil })
	if err != nil {
		f.Fatal(err)
	}
	return out.Bytes()
}

// FuzzOpen: a whole file of junk (header included), read through a file that claims any size,
// is refused cleanly; whatever Open accepts can be read through without a panic.
func FuzzOpen(f *testing.F) {
	h := header{version: Version, indexLen: 5, indexRaw: 10, resumeEnd: HeaderSize + 5}
	f.Add(append(h.encode(), 1, 2, 3, 4, 5), int64(101))
	f.Add(headerOnly(2<<40-HeaderSize, 1<<20), int64(2<<40))
	f.Add(headerOnly(200<<20, 200<<20), int64(1<<40))
	for _, codec := range []Codec{CodecZstd, CodecXZ} {
		file := fuzzOverlay(f, codec)
		f.Add(file, int64(len(file)))
		f.Add(file, int64(len(file))+1<<30)
		f.Add(file[:len(file)-7], int64(len(file)))
	}
	f.Fuzz(func(t *testing.T, b []byte, claimed int64) {
		// An odd claim reads as a sparse file (zeros past the bytes), an even one as a server
		// that sends less than it announced.
		ra := &claimedFile{b: b, size: claimed, sparse: claimed&1 == 1}
		r, err := Open(ra, claimed, Expect{Images: fuzzImages})
		if err != nil {
			return
		}
		defer r.Close()
		r.Devstate()
		for i := range r.Index.Blobs {
			r.Blob(uint32(i))
		}
		r.Verify(context.Background(), nil)
	})
}

// FuzzDecompress: no blob, whatever its codec and declared size, panics a decoder, and none
// decodes to other than its declared size. (FuzzOpen seldom gets this far: a mutated blob fails
// its digest first.)
func FuzzDecompress(f *testing.F) {
	raw := bytes.Repeat([]byte("cloudlet blob "), 300)
	for _, c := range []Codec{CodecZstd, CodecXZ} {
		z, err := compress(c, raw)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(c), z, int64(len(raw)))
		f.Add(uint8(c), z, int64(len(raw)-1))
	}
	f.Add(uint8(CodecXZ), xzBomb(f), int64(20))
	f.Fuzz(func(t *testing.T, c uint8, z []byte, raw int64) {
		raw = max(1, min(raw, 1<<20)) // the index bounds raw sizes; keep each run fast
		out, err := decompress(Codec(c), z, raw)
		if err == nil && int64(len(out)) != raw {
			t.Fatalf("decoded %d bytes, declared %d", len(out), raw)
		}
	})
}
