package overlay

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/cloudlet/cloudlet/chunk"
)

// Meta is what a writer needs besides the chunks.
type Meta struct {
	BaseID [32]byte
	Images []Image
	Config []byte // VM configuration, JSON
	Codec  Codec
	// BlobRaw is the uncompressed size of a working-set blob; 0 means DefaultBlobRaw.
	BlobRaw int
	// RestBlobRaw is the uncompressed size of the blobs after the working set; 0 means the
	// smaller of BlobRaw and DefaultRestBlobRaw.
	RestBlobRaw int
	// WorkingSet is how many leading entries of the prefetch order form the recorded working
	// set; the blobs holding them are counted in the index.
	WorkingSet int
}

// Entry is one changed chunk as the capture side decided it.
type Entry struct {
	Image     uint8
	Index     int64
	Kind      Kind
	BaseImage uint8 // KindBase
	BaseIndex int64 // KindBase
	SameImage uint8 // KindSelf: the stored chunk with the same bytes
	SameIndex int64 // KindSelf
	Digest    chunk.Digest
}

// ReadChunk returns the bytes of a chunk to store.
type ReadChunk func(image uint8, index int64) ([]byte, error)

// Summary describes a written overlay.
type Summary struct {
	ID              string
	Size            int64 // the file
	Blobs           int
	StoredChunks    int
	RawBytes        int64 // chunk bytes stored, before compression
	CompressedBytes int64 // blob bytes after compression
}

// Write builds an overlay into out. entries are the changed chunks, in any order. order lists
// entry positions of KindBlob entries in prefetch order; blob entries not listed follow in
// place order (image, then chunk number), so that a file's chunks share blobs and a next
// version of the same app, with its files at the same places, shares whole blobs with this
// one (overlay.Reorder lists only the working set). Content at several places is stored at the lowest of them (see canonical), keeping the
// prefetch position order gave it. read supplies each stored chunk's bytes, which are checked
// against the entry's digest. Blobs are staged in a temporary file in tmpDir.
func Write(ctx context.Context, out io.Writer, tmpDir string, m Meta, devstate []byte, entries []Entry, order []int, read ReadChunk) (Summary, error) {
	var s Summary
	ix := &Index{BaseID: m.BaseID, ChunkSize: chunk.Size, Codec: m.Codec, Images: m.Images, Config: m.Config}
	entries, order = canonical(entries, order)

	// Entries sorted by place; pos maps each place to its entry number.
	sorted := make([]int, len(entries))
	for i := range sorted {
		sorted[i] = i
	}
	sort.Slice(sorted, func(a, b int) bool {
		ea, eb := entries[sorted[a]], entries[sorted[b]]
		return ea.Image < eb.Image || ea.Image == eb.Image && ea.Index < eb.Index
	})
	type place struct {
		image uint8
		index int64
	}
	pos := map[place]int{}
	newPos := make([]int, len(entries)) // caller's position -> index position
	ix.Chunks = make([]Chunk, len(entries))
	for i, e := range sorted {
		en := entries[e]
		if _, dup := pos[place{en.Image, en.Index}]; dup {
			return s, fmt.Errorf("overlay: chunk %d of image %d given twice", en.Index, en.Image)
		}
		pos[place{en.Image, en.Index}] = i
		newPos[e] = i
		ix.Chunks[i] = Chunk{Image: en.Image, Index: en.Index, Kind: en.Kind, BaseImage: en.BaseImage, BaseIndex: en.BaseIndex, Digest: en.Digest}
	}
	for i, e := range sorted {
		en := entries[e]
		if en.Kind == KindSelf {
			target, ok := pos[place{en.SameImage, en.SameIndex}]
			if !ok {
				return s, fmt.Errorf("overlay: chunk %d of image %d refers to chunk %d of image %d, which is not stored", en.Index, en.Image, en.SameIndex, en.SameImage)
			}
			ix.Chunks[i].Self = uint32(target)
		}
	}

	// Prefetch order: the caller's, then the remaining stored chunks by place.
	seen := make([]bool, len(entries))
	for _, o := range order {
		if o < 0 || o >= len(entries) || entries[o].Kind != KindBlob || seen[newPos[o]] {
			return s, fmt.Errorf("overlay: prefetch entry %d is not a stored chunk, or repeated", o)
		}
		seen[newPos[o]] = true
		ix.Prefetch = append(ix.Prefetch, uint32(newPos[o]))
	}
	for i, c := range ix.Chunks {
		if c.Kind == KindBlob && !seen[i] {
			ix.Prefetch = append(ix.Prefetch, uint32(i))
		}
	}

	m.blobSizes(len(ix.Prefetch), m.WorkingSet)
	m.WorkingSet = min(max(m.WorkingSet, 0), len(ix.Prefetch)) // the table's place depends on it

	tmp, err := os.CreateTemp(tmpDir, "overlay-blobs-")
	if err != nil {
		return s, fmt.Errorf("overlay: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()

	devZ, err := compress(m.Codec, devstate)
	if err != nil {
		return s, fmt.Errorf("overlay: device state: %w", err)
	}
	ix.Devstate = Blob{Offset: 0, Length: int64(len(devZ)), Raw: int64(len(devstate)), Digest: sum(devZ)}
	next := ix.Devstate.Length
	// The digest table comes right after the working set: a resume does not wait for it.
	table := digestTable(ix)
	writeTable := func() error {
		if _, err := tmp.Write(table); err != nil {
			return fmt.Errorf("overlay: %w", err)
		}
		ix.Digests = Blob{Offset: next, Length: int64(len(table)), Raw: int64(len(table)), Digest: sum(table)}
		next += int64(len(table))
		return nil
	}
	if m.WorkingSet == 0 {
		if err := writeTable(); err != nil {
			return s, err
		}
	}

	var raw []byte
	flush := func() error {
		if len(raw) == 0 {
			return nil
		}
		z, err := compress(m.Codec, raw)
		if err != nil {
			return fmt.Errorf("overlay: blob %d: %w", len(ix.Blobs), err)
		}
		if _, err := tmp.Write(z); err != nil {
			return fmt.Errorf("overlay: %w", err)
		}
		ix.Blobs = append(ix.Blobs, Blob{Offset: next, Length: int64(len(z)), Raw: int64(len(raw)), Digest: sum(z)})
		next += int64(len(z))
		s.RawBytes += int64(len(raw))
		s.CompressedBytes += int64(len(z))
		raw = raw[:0]
		return nil
	}
	for n, p := range ix.Prefetch {
		if err := ctx.Err(); err != nil {
			return s, err
		}
		c := &ix.Chunks[p]
		data, err := read(c.Image, c.Index)
		if err != nil {
			return s, fmt.Errorf("overlay: read chunk %d of %s: %w", c.Index, m.Images[c.Image].Name, err)
		}
		if int64(len(data)) != ix.chunkLen(c.Image, c.Index) || sum(data) != c.Digest {
			return s, fmt.Errorf("overlay: chunk %d of %s changed while the overlay was built", c.Index, m.Images[c.Image].Name)
		}
		c.Blob, c.Offset = uint32(len(ix.Blobs)), int64(len(raw))
		raw = append(raw, data...)
		s.StoredChunks++
		// The working set ends a blob, so it is one contiguous range of whole blobs.
		limit := m.BlobRaw
		if n >= m.WorkingSet {
			limit = m.RestBlobRaw
		}
		if len(raw) >= limit || n+1 == m.WorkingSet {
			if err := flush(); err != nil {
				return s, err
			}
			if n+1 == m.WorkingSet {
				ix.WorkingSetBlobs = uint32(len(ix.Blobs))
				if err := writeTable(); err != nil {
					return s, err
				}
			}
		}
	}
	if err := flush(); err != nil {
		return s, err
	}
	if err := ix.validate(); err != nil {
		return s, fmt.Errorf("overlay: built an invalid index: %w", err)
	}

	rawIndex := encodeIndex(ix)
	zIndex, err := compress(CodecZstd, rawIndex)
	if err != nil {
		return s, fmt.Errorf("overlay: index: %w", err)
	}
	id := sum(rawIndex)
	hdr := header{version: Version, indexLen: int64(len(zIndex)), indexRaw: int64(len(rawIndex)), indexSHA: id,
		resumeEnd: HeaderSize + int64(len(zIndex)) + ix.resumeDataEnd()}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return s, err
	}
	for _, part := range [][]byte{hdr.encode(), zIndex, devZ} {
		if _, err := out.Write(part); err != nil {
			return s, fmt.Errorf("overlay: write: %w", err)
		}
	}
	n, err := io.Copy(out, tmp)
	if err != nil {
		return s, fmt.Errorf("overlay: write: %w", err)
	}
	if n != next-ix.Devstate.Length {
		return s, errors.New("overlay: blob staging file lost bytes")
	}
	s.ID = hex.EncodeToString(id[:])
	s.Size = HeaderSize + int64(len(zIndex)) + next
	s.Blobs = len(ix.Blobs)
	return s, nil
}

// digestTable is the index's chunk digest table: each stored chunk's digest, in entry order.
func digestTable(ix *Index) []byte {
	b := make([]byte, 0, ix.storedChunks()*chunk.DigestSize)
	for _, c := range ix.Chunks {
		if c.Kind == KindBlob {
			b = append(b, c.Digest[:]...)
		}
	}
	return b
}
