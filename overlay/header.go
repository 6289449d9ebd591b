package overlay

import (
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"

	"github.com/cloudlet/cloudlet/chunk"
)

// header is the fixed start of an overlay file:
//
//	0   8  magic "CLOUDOVL"
//	8   2  version (little endian)
//	10  2  reserved, zero
//	12  8  index length, compressed
//	20  8  index length, uncompressed
//	28 32  SHA-256 of the uncompressed index: the overlay's ID
//	60  8  resume end: where the working set and the digest table after it end (version 2 on)
//	68 24  reserved, zero
//	92  4  CRC-32 (IEEE) of bytes 0-91
//
// The resume end lets a reader ask for everything a resume needs (the rest of the index, the
// device state and the working set) in its second request, right after the header: before
// version 2 it had to decode the index first, which could take a third round trip.
type header struct {
	version   uint16
	indexLen  int64
	indexRaw  int64
	indexSHA  chunk.Digest
	resumeEnd int64
}

func (h header) encode() []byte {
	b := make([]byte, HeaderSize)
	copy(b, Magic)
	binary.LittleEndian.PutUint16(b[8:], h.version)
	binary.LittleEndian.PutUint64(b[12:], uint64(h.indexLen))
	binary.LittleEndian.PutUint64(b[20:], uint64(h.indexRaw))
	copy(b[28:60], h.indexSHA[:])
	binary.LittleEndian.PutUint64(b[60:], uint64(h.resumeEnd))
	binary.LittleEndian.PutUint32(b[92:], crc32.ChecksumIEEE(b[:92]))
	return b
}

func decodeHeader(b []byte, fileSize int64) (header, error) {
	var h header
	if len(b) < HeaderSize {
		return h, corrupt("header", "file has %d bytes, a header needs %d", len(b), HeaderSize)
	}
	if string(b[:8]) != Magic {
		return h, corrupt("header", "not an overlay (it does not start with %q)", Magic)
	}
	if got, want := crc32.ChecksumIEEE(b[:92]), binary.LittleEndian.Uint32(b[92:]); got != want {
		return h, corrupt("header", "checksum %08x, want %08x", got, want)
	}
	h.version = binary.LittleEndian.Uint16(b[8:])
	if h.version != Version {
		return h, corrupt("header", "format version %d; this cloudlet reads version %d only (rebuild the overlay with this cloudlet)", h.version, Version)
	}
	h.indexLen = int64(binary.LittleEndian.Uint64(b[12:]))
	h.indexRaw = int64(binary.LittleEndian.Uint64(b[20:]))
	copy(h.indexSHA[:], b[28:60])
	h.resumeEnd = int64(binary.LittleEndian.Uint64(b[60:]))
	if h.indexRaw <= 0 || h.indexRaw > MaxIndexRaw {
		return h, corrupt("header", "index of %d bytes, limit %d", h.indexRaw, MaxIndexRaw)
	}
	// A claim that zstd cannot produce from indexRaw bytes is refused before it is compared with
	// the file's size, which is itself a claim (a sparse file, an origin's Content-Length).
	if limit := compressBound(h.indexRaw); h.indexLen > limit {
		return h, corrupt("header", "index of %d compressed bytes for %d raw bytes, limit %d", h.indexLen, h.indexRaw, limit)
	}
	if h.indexLen <= 0 || HeaderSize+h.indexLen > fileSize {
		return h, corrupt("header", "index of %d bytes does not fit in a file of %d bytes (truncated?)", h.indexLen, fileSize)
	}
	// The resume end is only a hint for what to ask first: every byte read is still checked
	// against the index. It must lie past the index and in the file.
	if h.resumeEnd < HeaderSize+h.indexLen || h.resumeEnd > fileSize {
		return h, corrupt("header", "resume end %d outside [%d, %d]", h.resumeEnd, HeaderSize+h.indexLen, fileSize)
	}
	return h, nil
}

func sum(b []byte) chunk.Digest { return sha256.Sum256(b) }
