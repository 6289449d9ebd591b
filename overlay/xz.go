package overlay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

// An xz stream chooses its own dictionary size, and the xz package takes the stream's word for
// it: a 92-byte blob can make a decoder allocate 4 GiB. So the reader parses the container
// itself, as far as the one block the writer produces, bounds the dictionary by the blob's
// declared size, and hands the LZMA2 data to the lzma package with a dictionary of its own
// choosing. The container's own checks (CRC-32, CRC-64, index, footer) are not needed: the
// blob's SHA-256, checked before decoding, pins every byte.

var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

const (
	xzStreamHeader = 12   // magic, flags, CRC-32
	xzFilterLZMA2  = 0x21 // the only filter the writer uses
)

// xzDictLimit is the largest dictionary a blob of raw bytes may ask for.
func xzDictLimit(raw int64) int64 {
	rounded, _ := lzma.DecodeDictCap(lzma.EncodeDictCap(raw))
	return min(xzDictMax, max(xzDictFloor, rounded))
}

// newXZReader returns a reader of the data in the xz stream z, which must decode to raw bytes.
func newXZReader(z []byte, raw int64) (io.Reader, error) {
	if len(z) < xzStreamHeader || !bytes.Equal(z[:len(xzMagic)], xzMagic) {
		return nil, errors.New("xz: not an xz stream")
	}
	z = z[xzStreamHeader:]
	if len(z) == 0 || z[0] == 0 {
		return nil, errors.New("xz: stream has no block")
	}
	hlen := (int(z[0]) + 1) * 4
	if len(z) < hlen {
		return nil, fmt.Errorf("xz: block header of %d bytes, got %d", hlen, len(z))
	}
	dict, err := xzBlockDict(z[:hlen])
	if err != nil {
		return nil, err
	}
	if limit := xzDictLimit(raw); dict > limit {
		return nil, fmt.Errorf("xz: dictionary of %d bytes for %d raw bytes, limit %d", dict, raw, limit)
	}
	// Matches reach back at most as far as the data decoded so far, so a dictionary as long as
	// the blob decodes it whatever the stream asked for.
	capacity := max(lzma.MinDictCap, min(dict, raw))
	return lzma.Reader2Config{DictCap: int(capacity)}.NewReader2(bytes.NewReader(z[hlen:]))
}

// xzBlockDict parses a block header and returns the dictionary size of its LZMA2 filter, the
// only filter it may have.
func xzBlockDict(h []byte) (int64, error) {
	n := len(h)
	if got, want := crc32.ChecksumIEEE(h[:n-4]), binary.LittleEndian.Uint32(h[n-4:]); got != want {
		return 0, fmt.Errorf("xz: block header checksum %08x, want %08x", got, want)
	}
	flags := h[1]
	if flags&0x03 != 0 || flags&0x3c != 0 {
		return 0, fmt.Errorf("xz: block flags %#x: want one filter (LZMA2) and no reserved bits", flags)
	}
	p := h[2 : n-4]
	skip := func() uint64 {
		v, k := binary.Uvarint(p)
		if k <= 0 {
			p = nil
			return 0
		}
		p = p[k:]
		return v
	}
	if flags&0x40 != 0 { // compressed size
		skip()
	}
	if flags&0x80 != 0 { // uncompressed size
		skip()
	}
	id, size := skip(), skip()
	if id != xzFilterLZMA2 || size != 1 || len(p) < 1 {
		return 0, fmt.Errorf("xz: filter %#x with %d property bytes, want LZMA2 (%#x) with 1", id, size, xzFilterLZMA2)
	}
	dict, err := lzma.DecodeDictCap(p[0])
	if err != nil {
		return 0, fmt.Errorf("xz: %w", err)
	}
	return dict, nil
}
