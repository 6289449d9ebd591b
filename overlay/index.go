package overlay

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cloudlet/cloudlet/chunk"
)

// CorruptError reports an overlay that is damaged, truncated, hostile or of another version.
type CorruptError struct {
	Part string // "header", "index", "blob 12", "chunk 7 of disk", ...
	Err  error
}

func (e *CorruptError) Error() string { return fmt.Sprintf("overlay %s: %v", e.Part, e.Err) }
func (e *CorruptError) Unwrap() error { return e.Err }

func corrupt(part string, format string, args ...any) error {
	return &CorruptError{Part: part, Err: fmt.Errorf(format, args...)}
}

// encodeIndex serialises the index (little-endian, unsigned varints; see
// docs/overlay-format.md).
func encodeIndex(ix *Index) []byte {
	var b []byte
	uv := func(v uint64) { b = binary.AppendUvarint(b, v) }
	blob := func(bl Blob) {
		uv(uint64(bl.Offset))
		uv(uint64(bl.Length))
		uv(uint64(bl.Raw))
		b = append(b, bl.Digest[:]...)
	}
	b = append(b, ix.BaseID[:]...)
	uv(uint64(ix.ChunkSize))
	b = append(b, byte(ix.Codec))
	uv(uint64(len(ix.Images)))
	for _, im := range ix.Images {
		uv(uint64(len(im.Name)))
		b = append(b, im.Name...)
		uv(uint64(im.Size))
	}
	uv(uint64(len(ix.Config)))
	b = append(b, ix.Config...)
	blob(ix.Devstate)
	uv(uint64(len(ix.Blobs)))
	for _, bl := range ix.Blobs {
		blob(bl)
	}
	blob(ix.Digests)
	uv(uint64(len(ix.Chunks)))
	for _, c := range ix.Chunks {
		b = append(b, c.Image)
		uv(uint64(c.Index))
		b = append(b, byte(c.Kind))
		switch c.Kind {
		case KindBase:
			b = append(b, c.BaseImage)
			uv(uint64(c.BaseIndex))
		case KindSelf:
			uv(uint64(c.Self))
		case KindBlob:
			uv(uint64(c.Blob))
			uv(uint64(c.Offset))
		}
		if c.Kind == KindBase {
			b = append(b, c.Digest[:]...)
		}
	}
	uv(uint64(len(ix.Prefetch)))
	for _, p := range ix.Prefetch {
		uv(uint64(p))
	}
	uv(uint64(ix.WorkingSetBlobs))
	return b
}

// decoder reads the index with bounds checks; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

var errShort = errors.New("index ends early")

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) uvarint(what string, limit uint64) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(fmt.Errorf("%s: %w", what, errShort))
		return 0
	}
	// Only the shortest encoding is valid, so that an index has exactly one byte form (its
	// digest is the overlay's identity).
	if n != binary.PutUvarint(make([]byte, binary.MaxVarintLen64), v) {
		d.fail(fmt.Errorf("%s: overlong varint", what))
		return 0
	}
	d.b = d.b[n:]
	if v > limit {
		d.fail(fmt.Errorf("%s is %d, limit %d", what, v, limit))
		return 0
	}
	return v
}

func (d *decoder) bytes(what string, n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if uint64(len(d.b)) < n {
		d.fail(fmt.Errorf("%s: %w", what, errShort))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte1(what string) byte {
	v := d.bytes(what, 1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (d *decoder) digest(what string) (dg chunk.Digest) {
	copy(dg[:], d.bytes(what, chunk.DigestSize))
	return dg
}

// count reads an item count, refusing one that the remaining bytes cannot hold (each item
// takes at least minSize bytes): an absurd count never becomes an allocation.
func (d *decoder) count(what string, limit uint64, minSize int) int {
	n := d.uvarint(what+" count", limit)
	if d.err == nil && n*uint64(minSize) > uint64(len(d.b)) {
		d.fail(fmt.Errorf("%s count %d does not fit in the %d bytes left", what, n, len(d.b)))
		return 0
	}
	return int(n)
}

// countWithin is count with a second bound, which comes from what was decoded before (the
// images) and is named in the error.
func (d *decoder) countWithin(what string, limit, bound uint64, boundName string, minSize int) int {
	n := d.uvarint(what+" count", limit)
	if d.err == nil && n > bound {
		d.fail(fmt.Errorf("%s count %d is more than %s (%d)", what, n, boundName, bound))
	}
	if d.err == nil && n*uint64(minSize) > uint64(len(d.b)) {
		d.fail(fmt.Errorf("%s count %d does not fit in the %d bytes left", what, n, len(d.b)))
	}
	if d.err != nil {
		return 0
	}
	return int(n)
}

func (d *decoder) blob(what string) Blob {
	return Blob{
		Offset: int64(d.uvarint(what+" offset", 1<<62)),
		Length: int64(d.uvarint(what+" length", uint64(compressBound(max(MaxBlobRaw, MaxDevstateRaw))))),
		Raw:    int64(d.uvarint(what+" raw size", max(MaxBlobRaw, MaxDevstateRaw))),
		Digest: d.digest(what + " digest"),
	}
}

// decodeIndex parses and validates an uncompressed index. It decodes the head (base ID, chunk
// size, codec, images, config) first and hands it to check, if not nil, before it decodes a
// single entry: an index for another base is refused before it costs anything. Each count is
// then checked against what the images can hold and against the bytes left before anything is
// allocated for it.
func decodeIndex(b []byte, check func(*Index) error) (*Index, error) {
	d := &decoder{b: b}
	ix := &Index{}
	d.head(ix)
	if d.err != nil {
		return nil, corrupt("index", "%w", d.err)
	}
	if err := ix.validateHead(); err != nil {
		return nil, corrupt("index", "%w", err)
	}
	if check != nil {
		if err := check(ix); err != nil {
			return nil, err
		}
	}
	d.entries(ix)
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Errorf("%d bytes after the end", len(d.b)))
	}
	if d.err != nil {
		return nil, corrupt("index", "%w", d.err)
	}
	if err := ix.validate(); err != nil {
		return nil, corrupt("index", "%w", err)
	}
	return ix, nil
}

// head decodes the fields before the entries.
func (d *decoder) head(ix *Index) {
	copy(ix.BaseID[:], d.bytes("base ID", 32))
	ix.ChunkSize = int(d.uvarint("chunk size", 1<<20))
	ix.Codec = Codec(d.byte1("codec"))
	ix.Images = make([]Image, d.count("image", MaxImages, 2))
	for i := range ix.Images {
		ix.Images[i].Name = string(d.bytes("image name", d.uvarint("image name length", MaxNameLen)))
		ix.Images[i].Size = int64(d.uvarint("image size", MaxImageSize))
	}
	ix.Config = d.bytes("config", d.uvarint("config length", MaxConfigLen))
}

// entries decodes the device state, blobs, chunks and prefetch order. No count exceeds the
// chunks the images hold (each blob holds at least one chunk; each prefetch entry is a chunk).
func (d *decoder) entries(ix *Index) {
	capacity := uint64(chunkCapacity(ix.Images))
	ix.Devstate = d.blob("devstate")
	ix.Blobs = make([]Blob, d.countWithin("blob", MaxBlobs, capacity, "the chunks the images hold", 3+chunk.DigestSize))
	for i := range ix.Blobs {
		ix.Blobs[i] = d.blob("blob")
	}
	ix.Digests = Blob{
		Offset: int64(d.uvarint("digest table offset", 1<<62)),
		Length: int64(d.uvarint("digest table length", chunk.DigestSize*MaxChunks)),
		Raw:    int64(d.uvarint("digest table raw size", chunk.DigestSize*MaxChunks)),
		Digest: d.digest("digest table digest"),
	}
	ix.Chunks = make([]Chunk, d.countWithin("chunk", MaxChunks, capacity, "the chunks the images hold", 3))
	for i := range ix.Chunks {
		d.chunk(&ix.Chunks[i])
		if d.err != nil {
			return
		}
	}
	ix.Prefetch = make([]uint32, d.countWithin("prefetch", MaxChunks, uint64(len(ix.Chunks)), "the chunk entries", 1))
	for i := range ix.Prefetch {
		ix.Prefetch[i] = uint32(d.uvarint("prefetch entry", MaxChunks))
	}
	ix.WorkingSetBlobs = uint32(d.uvarint("working-set blobs", MaxBlobs))
}

func (d *decoder) chunk(c *Chunk) {
	c.Image = d.byte1("chunk image")
	c.Index = int64(d.uvarint("chunk index", MaxImageSize))
	c.Kind = Kind(d.byte1("chunk kind"))
	switch c.Kind {
	case KindBase:
		c.BaseImage = d.byte1("base image")
		c.BaseIndex = int64(d.uvarint("base chunk", MaxImageSize))
	case KindSelf:
		c.Self = uint32(d.uvarint("self reference", MaxChunks))
	case KindBlob:
		c.Blob = uint32(d.uvarint("blob number", MaxBlobs))
		c.Offset = int64(d.uvarint("blob offset", MaxBlobRaw))
	}
	if c.Kind == KindBase {
		c.Digest = d.digest("chunk digest")
	}
}

// validate checks the index's internal consistency: every reference points at something
// that exists and has the right kind and size.
func (ix *Index) validate() error {
	if err := ix.validateHead(); err != nil {
		return err
	}
	if err := ix.validateBlobs(); err != nil {
		return err
	}
	return ix.validateChunks()
}

// validateHead checks the fields before the entries.
func (ix *Index) validateHead() error {
	if ix.ChunkSize != chunk.Size {
		return fmt.Errorf("chunk size %d, this cloudlet uses %d", ix.ChunkSize, chunk.Size)
	}
	if ix.Codec != CodecZstd && ix.Codec != CodecXZ {
		return fmt.Errorf("unknown codec %d", ix.Codec)
	}
	if len(ix.Images) == 0 {
		return errors.New("no images")
	}
	names := map[string]bool{}
	for _, im := range ix.Images {
		if im.Name == "" || names[im.Name] || im.Size <= 0 {
			return fmt.Errorf("bad or repeated image %q of %d bytes", im.Name, im.Size)
		}
		names[im.Name] = true
	}
	return nil
}

// validateBlobs checks each blob's and the device state's lengths against their raw lengths
// and the format's limits, and that they follow each other, the digest table right after the
// working set's blobs.
func (ix *Index) validateBlobs() error {
	if err := checkBlobSize("device state", ix.Devstate, MaxDevstateRaw); err != nil {
		return err
	}
	if int(ix.WorkingSetBlobs) > len(ix.Blobs) {
		return fmt.Errorf("working set of %d blobs, but %d blobs", ix.WorkingSetBlobs, len(ix.Blobs))
	}
	end := ix.Devstate.Offset + ix.Devstate.Length
	table := func() error {
		t := ix.Digests
		if t.Raw != t.Length || t.Raw%chunk.DigestSize != 0 {
			return fmt.Errorf("digest table of %d bytes (%d raw): want a whole number of digests, stored as is", t.Length, t.Raw)
		}
		if t.Offset != end {
			return fmt.Errorf("digest table at %d does not follow the working set (ends at %d)", t.Offset, end)
		}
		end += t.Length
		return nil
	}
	for i, bl := range ix.Blobs {
		if i == int(ix.WorkingSetBlobs) {
			if err := table(); err != nil {
				return err
			}
		}
		if err := checkBlobSize(fmt.Sprintf("blob %d", i), bl, MaxBlobRaw); err != nil {
			return err
		}
		if bl.Offset != end {
			return fmt.Errorf("blob %d at %d+%d does not follow the previous one (ends at %d)", i, bl.Offset, bl.Length, end)
		}
		end = bl.Offset + bl.Length
	}
	if int(ix.WorkingSetBlobs) == len(ix.Blobs) {
		return table()
	}
	return nil
}

func checkBlobSize(what string, b Blob, maxRaw int64) error {
	if b.Raw <= 0 || b.Raw > maxRaw {
		return fmt.Errorf("%s of %d raw bytes, want 1 to %d", what, b.Raw, maxRaw)
	}
	if limit := compressBound(b.Raw); b.Length <= 0 || b.Length > limit {
		return fmt.Errorf("%s of %d compressed bytes for %d raw bytes, want 1 to %d", what, b.Length, b.Raw, limit)
	}
	return nil
}

// validateChunks checks that every chunk entry and prefetch entry points at something that
// exists and has the right kind and size.
func (ix *Index) validateChunks() error {
	// held counts each blob's chunk bytes: a blob holds its chunks and nothing else, so the
	// blobs' raw sizes add up to no more than the images.
	held := make([]int64, len(ix.Blobs))
	prev := [2]int64{-1, -1}
	for i, c := range ix.Chunks {
		if int(c.Image) >= len(ix.Images) {
			return fmt.Errorf("chunk entry %d: image %d of %d", i, c.Image, len(ix.Images))
		}
		if cur := [2]int64{int64(c.Image), c.Index}; cur[0] < prev[0] || cur[0] == prev[0] && cur[1] <= prev[1] {
			return fmt.Errorf("chunk entry %d: not in order", i)
		} else {
			prev = cur
		}
		if c.Index >= chunk.Count(ix.Images[c.Image].Size) {
			return fmt.Errorf("chunk entry %d: chunk %d is beyond %s", i, c.Index, ix.Images[c.Image].Name)
		}
		switch c.Kind {
		case KindZero:
		case KindBase:
			if int(c.BaseImage) >= len(ix.Images) || c.BaseIndex >= chunk.Count(ix.Images[c.BaseImage].Size) ||
				ix.chunkLen(c.BaseImage, c.BaseIndex) != ix.chunkLen(c.Image, c.Index) {
				return fmt.Errorf("chunk entry %d: bad base reference %d/%d", i, c.BaseImage, c.BaseIndex)
			}
		case KindSelf:
			if int(c.Self) >= len(ix.Chunks) || ix.Chunks[c.Self].Kind != KindBlob {
				return fmt.Errorf("chunk entry %d: self reference %d is not a stored chunk", i, c.Self)
			}
			// The target may come later, unchecked yet: its place first, then its length,
			// which must be this chunk's (a short last chunk cannot take a whole one's bytes).
			t := ix.Chunks[c.Self]
			if int(t.Image) >= len(ix.Images) || t.Index >= chunk.Count(ix.Images[t.Image].Size) ||
				ix.chunkLen(t.Image, t.Index) != ix.chunkLen(c.Image, c.Index) {
				return fmt.Errorf("chunk entry %d: self reference %d has another length", i, c.Self)
			}
		case KindBlob:
			if int(c.Blob) >= len(ix.Blobs) || c.Offset%ix.chunkBytes() != 0 ||
				c.Offset+ix.chunkLen(c.Image, c.Index) > ix.Blobs[c.Blob].Raw {
				return fmt.Errorf("chunk entry %d: blob %d offset %d out of range", i, c.Blob, c.Offset)
			}
			held[c.Blob] += ix.chunkLen(c.Image, c.Index)
		default:
			return fmt.Errorf("chunk entry %d: unknown kind %d", i, c.Kind)
		}
	}
	for i, n := range held {
		if n != ix.Blobs[i].Raw {
			return fmt.Errorf("blob %d holds %d bytes of chunks, but its raw size is %d", i, n, ix.Blobs[i].Raw)
		}
	}
	if stored := int64(ix.storedChunks()); ix.Digests.Raw != stored*chunk.DigestSize {
		return fmt.Errorf("digest table of %d bytes for %d stored chunks", ix.Digests.Raw, stored)
	}
	for i, p := range ix.Prefetch {
		if int(p) >= len(ix.Chunks) || ix.Chunks[p].Kind != KindBlob {
			return fmt.Errorf("prefetch entry %d: %d is not a stored chunk", i, p)
		}
	}
	return nil
}

// storedChunks counts the stored (KindBlob) chunk entries: the digest table's rows.
func (ix *Index) storedChunks() int {
	n := 0
	for _, c := range ix.Chunks {
		if c.Kind == KindBlob {
			n++
		}
	}
	return n
}
