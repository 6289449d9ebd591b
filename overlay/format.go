// Package overlay owns cloudlet's overlay file format: its writer, its reader, its codecs and
// its limits. The format is specified in docs/overlay-format.md; the constants below are the
// normative values.
//
// An overlay is one file that any static web server can serve:
//
//	header    96 bytes, fixed
//	index     zstd-compressed; holds everything but chunk bytes
//	devstate  QEMU device state, compressed with the overlay's codec
//	blobs     chunk data, about BlobRaw bytes each before compression, in prefetch order;
//	          after the working set's blobs, the chunk digest table
//
// A reader fetches FirstRead bytes first, then everything up to the header's resume end (the
// rest of the index, the device state, the working set) as one stream when its ReaderAt can
// prefetch, else the rest of the index in runs of a few MiB. The SHA-256 of the uncompressed
// index is the overlay's identity; the index pins every blob's SHA-256 and the digest table's,
// which holds every stored chunk's, so every byte a reader uses is verified. The file is
// attacker input: every length it claims is bounded (see limits.go) before anything is
// allocated for it.
package overlay

import (
	"fmt"

	"github.com/cloudlet/cloudlet/chunk"
)

// Magic opens every overlay file.
const Magic = "CLOUDOVL"

// Version is the format version this package writes and reads. Version 2 added the resume end
// to the header; version 3 moved the stored chunks' digests out of the index into a table
// after the working set, so that a resume waits for an index a third of the size.
const Version = 3

// HeaderSize is the fixed size of the header.
const HeaderSize = 96

// FirstRead is what a reader fetches first: the header, and for small overlays the index. It
// is small because nothing can be decoded before it has all arrived; the rest of what a resume
// needs is asked for at once, by the header's resume end (see Prefetcher).
const FirstRead = 16 << 10

// DefaultBlobRaw is the default uncompressed size of the working set's blobs. A blob reaches
// the VM once its bytes are all in and verified, and a VM that resumes while its working set
// still streams catches up with the stream: it then waits for a whole blob, so small blobs
// let it go on sooner. Measured on the test guest (profiled, 3 runs, bench/ttfr -links
// 10Mbit,38Mbit,100Mbit), 64 KiB blobs against 1 MiB: TTFR 1.25 s against 1.49 s at 10 Mbit/s,
// 0.46 s against 0.65 s at 38 Mbit/s, 0.41 s against 0.50 s at 100 Mbit/s, for an index that
// grows by a blob entry (about 50 bytes) per 64 KiB.
const DefaultBlobRaw = 64 << 10

// DefaultRestBlobRaw is the default uncompressed size of the blobs after the working set.
// They are fetched in the background or one by one on demand, and the shared chunk cache
// spares only blobs whose chunks it holds all of: smaller blobs let a next version of an app
// share more of them, and a demand miss waits for less. Measured on the test guest (v2 = v1
// plus a 4 MB file, v1's chunks in the cache, bench/chunkcache.sh 2, see bench/NOTES.md), v2
// fetched 1.20-1.21 times the change when profiled and 1.28 times when not with 64 KiB blobs,
// against 1.25-1.32 and 1.39 with 256 KiB (128 KiB: 1.23-1.26 and 1.33). The cost: overlays
// up to 0.4 % larger (the test app's v2 and the realistic overlay) and an index 4-6 % larger,
// read before the first fetch (+15 KB on the 25.8 MB test app, +38 KB on the 53 MB realistic
// overlay). TTFR on the test guest at 10 Mbit/s did not get worse: medians of 7 runs, 1.49 s
// against 1.77 s profiled, 2.77 s against 4.18 s unprofiled.
const DefaultRestBlobRaw = 64 << 10

// Limits, checked before anything is allocated for a value read from a file.
const (
	MaxIndexRaw    = 256 << 20 // uncompressed index
	MaxImages      = 4
	MaxNameLen     = 32
	MaxImageSize   = 1 << 40
	MaxConfigLen   = 64 << 10
	MaxDevstateRaw = 64 << 20
	MaxBlobRaw     = 64 << 20
	MaxBlobs       = 1 << 20
	MaxChunks      = 1 << 28 // a TiB of 4 KiB chunks
)

// Kind says where a chunk's bytes come from.
type Kind uint8

const (
	// KindZero: all zeros; no data, no digest.
	KindZero Kind = iota
	// KindBase: equal to chunk BaseIndex of base image BaseImage (not necessarily at the
	// same place, nor in the same image).
	KindBase
	// KindSelf: equal to the chunk of entry Self, which is a blob chunk.
	KindSelf
	// KindBlob: stored in blob Blob at raw offset Offset.
	KindBlob
	numKinds
)

func (k Kind) String() string {
	switch k {
	case KindZero:
		return "zero"
	case KindBase:
		return "base"
	case KindSelf:
		return "self"
	case KindBlob:
		return "blob"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Codec names a blob compression.
type Codec uint8

const (
	CodecZstd Codec = 1
	CodecXZ   Codec = 2
)

func (c Codec) String() string {
	switch c {
	case CodecZstd:
		return "zstd"
	case CodecXZ:
		return "xz"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// ParseCodec reads "zstd" or "xz".
func ParseCodec(s string) (Codec, error) {
	switch s {
	case "zstd":
		return CodecZstd, nil
	case "xz":
		return CodecXZ, nil
	}
	return 0, fmt.Errorf("codec %q: want zstd or xz", s)
}

// Image is one image the overlay changes.
type Image struct {
	Name string
	Size int64
}

// Blob is a compressed run of chunk data (or the device state).
type Blob struct {
	Offset int64 // from the start of the data section (just after the index)
	Length int64 // compressed bytes
	Raw    int64 // uncompressed bytes
	Digest chunk.Digest
}

// Chunk is one chunk of an image that differs from the base at its place.
type Chunk struct {
	Image     uint8
	Index     int64
	Kind      Kind
	BaseImage uint8  // KindBase
	BaseIndex int64  // KindBase
	Self      uint32 // KindSelf: entry number of the blob chunk with the same bytes
	Blob      uint32 // KindBlob
	Offset    int64  // KindBlob: raw offset within the blob, a multiple of the chunk size
	// Digest is the chunk's SHA-256. The index holds it for base references only; a stored
	// chunk's (and so a self reference's) comes from the digest table, and stays zero in a
	// Reader from OpenIndex (see Reader.LoadDigests and Reader.ChunkDigest).
	Digest chunk.Digest
}

// Index is everything in an overlay but the data.
type Index struct {
	BaseID    [32]byte
	ChunkSize int
	Codec     Codec
	Images    []Image
	// Config is the VM configuration (JSON) a resume must use.
	Config   []byte
	Devstate Blob
	Blobs    []Blob
	// Digests is the chunk digest table: the SHA-256 of each stored (KindBlob) chunk, in
	// entry order, stored as is (Raw = Length) right after the working set's blobs, or after
	// the device state if there is no working set.
	Digests Blob
	// Chunks are sorted by image, then index.
	Chunks []Chunk
	// Prefetch lists blob-chunk entries in the order a resuming VM is expected to need them;
	// blobs hold chunks in this order.
	Prefetch []uint32
	// WorkingSetBlobs is how many leading blobs hold the recorded working set.
	WorkingSetBlobs uint32
}

// ChunkBytes is the chunk size as an int64.
func (ix *Index) chunkBytes() int64 { return int64(ix.ChunkSize) }

// chunkLen is the length of chunk c of image im (the last one may be short).
func (ix *Index) chunkLen(im uint8, c int64) int64 {
	return min(ix.chunkBytes(), ix.Images[im].Size-c*ix.chunkBytes())
}

// ImageIndex returns the position of the named image, or -1.
func (ix *Index) ImageIndex(name string) int {
	for i, im := range ix.Images {
		if im.Name == name {
			return i
		}
	}
	return -1
}
