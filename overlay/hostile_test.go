package overlay

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/cloudlet/cloudlet/chunk"
)

// claimedFile is an io.ReaderAt over real bytes that claims a bigger size, as a sparse file or
// a lying origin does. Past the real bytes it serves zeros (sparse) or nothing (lying). It
// never writes to the caller's buffer past the real bytes, so a claim-sized buffer costs no
// resident memory and the tests measure allocation, not page faults.
type claimedFile struct {
	b      []byte
	size   int64
	sparse bool
}

func (f *claimedFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.size {
		return 0, io.EOF
	}
	n := 0
	if off < int64(len(f.b)) {
		n = copy(p, f.b[off:])
	}
	if !f.sparse {
		if n < len(p) {
			return n, io.EOF
		}
		return n, nil
	}
	rest := min(int64(len(p)), f.size-off)
	if rest < int64(len(p)) {
		return int(rest), io.EOF
	}
	return len(p), nil
}

// allocated is how many bytes f allocates on the heap.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// fileOf builds an overlay file from an index and a data section, with a correct header:
// hostile files that only the checks behind the header can refuse.
func fileOf(t testing.TB, ix *Index, data []byte) []byte {
	t.Helper()
	raw := encodeIndex(ix)
	z, err := compress(CodecZstd, raw)
	if err != nil {
		t.Fatal(err)
	}
	h := header{version: Version, indexLen: int64(len(z)), indexRaw: int64(len(raw)), indexSHA: sum(raw), resumeEnd: HeaderSize + int64(len(z))}
	return append(append(h.encode(), z...), data...)
}

// headerOnly is a 96-byte overlay whose header claims an index of indexLen compressed bytes.
func headerOnly(indexLen, indexRaw int64) []byte {
	return header{version: Version, indexLen: indexLen, indexRaw: indexRaw, resumeEnd: HeaderSize + indexLen}.encode()
}

// manyZeroChunks is an index about 3.6 MB long that lists n zero chunks of a huge image: small
// on the wire, and each entry costs a Chunk struct once decoded.
func manyZeroChunks(n int) *Index {
	ix := &Index{ChunkSize: chunk.Size, Codec: CodecZstd, Config: []byte(`{}`),
		Images:   []Image{{Name: "disk", Size: MaxImageSize}},
		Devstate: Blob{Length: 10, Raw: 20}, Digests: Blob{Offset: 10}}
	ix.BaseID[0] = 1
	ix.Chunks = make([]Chunk, n)
	for i := range ix.Chunks {
		ix.Chunks[i] = Chunk{Index: int64(i), Kind: KindZero}
	}
	return ix
}

// TestOpenHostileSizes: claims in the header and index never become allocations. Each case
// is refused with a CorruptError (or, for another base, an error wrapping ErrOtherBase), and
// Open allocates little while refusing it.
func TestOpenHostileSizes(t *testing.T) {
	const TiB = 1 << 40
	big := fileOf(t, manyZeroChunks(1_200_000), make([]byte, 10))
	otherBase := strings.Repeat("ab", 32)
	bigBase := hex.EncodeToString(manyZeroChunks(0).BaseID[:])
	baseImages := []Image{{Name: "disk", Size: 1 << 30}, {Name: "memory", Size: 256 << 20}}
	tests := []struct {
		name     string
		file     *claimedFile
		want     Expect
		wantErr  string
		other    bool // the error wraps ErrOtherBase rather than being a CorruptError
		maxAlloc uint64
	}{
		{"2 TiB index in a sparse 2 TiB file", &claimedFile{b: headerOnly(2*TiB-HeaderSize, 1<<20), size: 2 * TiB, sparse: true}, Expect{}, "header", false, 4 << 20},
		{"4 GiB index in a sparse file", &claimedFile{b: headerOnly(4<<30, 1<<20), size: 5 << 30, sparse: true}, Expect{}, "header", false, 4 << 20},
		{"200 MiB index of zeros", &claimedFile{b: headerOnly(200<<20, 200<<20), size: TiB, sparse: true}, Expect{}, "index", false, 16 << 20},
		{"200 MiB index that never arrives", &claimedFile{b: headerOnly(200<<20, 200<<20), size: TiB}, Expect{}, "index", false, 16 << 20},
		{"200 MiB index for a small base", &claimedFile{b: headerOnly(200<<20, 200<<20), size: TiB, sparse: true},
			Expect{BaseID: otherBase, Images: []Image{{Name: "disk", Size: 1 << 20}}}, "need at most", false, 4 << 20},
		{"3.6 MB index of 1.2 million zero chunks, for another base", &claimedFile{b: big, size: int64(len(big))},
			Expect{BaseID: otherBase, Images: baseImages}, "is for base", true, 24 << 20},
		{"3.6 MB index of 1.2 million zero chunks, for other images", &claimedFile{b: big, size: int64(len(big))},
			Expect{BaseID: bigBase, Images: baseImages}, "has images", true, 24 << 20},
		{"index claims more chunks than its images hold", &claimedFile{b: fileOf(t, smallImagesManyChunks(), make([]byte, 10)), size: TiB},
			Expect{}, "chunk count", false, 16 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			n := allocated(func() {
				var r *Reader
				r, err = Open(tc.file, tc.file.size, tc.want)
				if err == nil {
					r.Close()
				}
			})
			var ce *CorruptError
			if tc.other != errors.Is(err, ErrOtherBase) || !tc.other && !errors.As(err, &ce) || err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Open: %v, want an error mentioning %q (other base: %v)", err, tc.wantErr, tc.other)
			}
			t.Logf("Open allocated %d KiB: %v", n>>10, err)
			if n > tc.maxAlloc {
				t.Errorf("Open allocated %d MiB, want at most %d MiB", n>>20, tc.maxAlloc>>20)
			}
		})
	}
}

// smallImagesManyChunks lists more zero chunks than its one 64 KiB image holds.
func smallImagesManyChunks() *Index {
	ix := manyZeroChunks(100_000)
	ix.Images[0].Size = 16 * chunk.Size
	return ix
}

// xzBomb is a tiny xz stream whose LZMA2 filter asks for the largest dictionary there is
// (4 GiB): a decoder that takes the stream's word allocates it.
func xzBomb(t testing.TB) []byte {
	t.Helper()
	z, err := compress(CodecXZ, []byte("hello, hostile world"))
	if err != nil {
		t.Fatal(err)
	}
	const block = 12 // after the stream header
	hlen := (int(z[block]) + 1) * 4
	h := z[block : block+hlen]
	i := bytes.Index(h, []byte{0x21, 0x01})
	if i < 0 {
		t.Fatalf("no LZMA2 filter in the block header % x", h)
	}
	h[i+2] = 40 // dictionary code 40: 4 GiB - 1
	binary.LittleEndian.PutUint32(h[hlen-4:], crc32.ChecksumIEEE(h[:hlen-4]))
	return z
}

// zstdWindowBomb is a zstd frame of 5 bytes whose header asks for a 2 GiB window.
func zstdWindowBomb() []byte {
	return []byte{0x28, 0xb5, 0x2f, 0xfd, // magic
		0x00,            // no content size, no checksum, not single-segment
		21 << 3,         // window 2^(10+21) bytes
		5<<3 | 0<<1 | 1, // last block, raw, 5 bytes
		0, 0, 'h', 'e', 'l', 'l', 'o'}
}

// TestDecoderMemoryBound: a blob's stream cannot choose how much memory its decoder takes; the
// declared raw size bounds it.
func TestDecoderMemoryBound(t *testing.T) {
	tests := []struct {
		name  string
		codec Codec
		z     []byte
		raw   int64
		want  string
	}{
		{"xz stream asking for a 4 GiB dictionary", CodecXZ, xzBomb(t), 20, "dictionary of 4294967295 bytes for 20 raw bytes, limit 8388608"},
		{"zstd frame asking for a 2 GiB window", CodecZstd, zstdWindowBomb(), 5, "window"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			n := allocated(func() { _, err = decompress(tc.codec, tc.z, tc.raw) })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("decompress: %v, want an error mentioning %q", err, tc.want)
			}
			if n > 4<<20 {
				t.Errorf("decompress allocated %d MiB for a %d-byte blob", n>>20, len(tc.z))
			}
		})
	}
}

// TestBlobReadInRuns: a blob whose claimed length the file does not hold is read as its bytes
// arrive, not into one buffer of the claimed size.
func TestBlobReadInRuns(t *testing.T) {
	dev := []byte("device state")
	devZ, err := compress(CodecZstd, dev)
	if err != nil {
		t.Fatal(err)
	}
	ix := &Index{ChunkSize: chunk.Size, Codec: CodecZstd, Config: []byte(`{}`),
		Images:   []Image{{Name: "disk", Size: 64 << 20}},
		Devstate: Blob{Length: int64(len(devZ)), Raw: int64(len(dev)), Digest: sum(devZ)},
		Prefetch: []uint32{0},
	}
	const chunks = 60 << 20 / chunk.Size // the chunks the blob claims to hold
	for i := range int64(chunks) {
		ix.Chunks = append(ix.Chunks, Chunk{Index: i, Kind: KindBlob, Offset: i * chunk.Size})
	}
	ix.Digests = Blob{Offset: int64(len(devZ)), Length: chunks * chunk.DigestSize, Raw: chunks * chunk.DigestSize}
	ix.Blobs = []Blob{{Offset: ix.Digests.Offset + ix.Digests.Length, Length: 60 << 20, Raw: 60 << 20}}
	f := &claimedFile{b: fileOf(t, ix, devZ), size: 1 << 30}
	r, err := OpenIndex(f, f.size, Expect{}) // the digest table is not in the file either
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, err := r.Devstate(); err != nil || !bytes.Equal(got, dev) {
		t.Fatalf("devstate %q, %v", got, err)
	}
	n := allocated(func() { _, err = r.Blob(0) })
	if err == nil {
		t.Fatal("a blob that is not in the file was read")
	}
	if n > 8<<20 {
		t.Errorf("reading a missing 60 MiB blob allocated %d MiB", n>>20)
	}
}
