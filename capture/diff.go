package capture

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"sort"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
)

// DiffStats counts what became of the chunks the VM modified.
type DiffStats struct {
	Dirty     int // chunks the VM wrote
	Unchanged int // written, but equal to the base chunk at the same place: dropped
	Zero      int
	BaseDedup int // equal to a base chunk elsewhere
	SelfDedup int // equal to another stored chunk
	Stored    int // unique chunks that go into blobs
}

// baseIndex finds base chunks by digest. Keys are the first 8 bytes of a digest; a hit is
// confirmed against the full digest in the index files.
type baseIndex struct {
	digests [][]byte // per image: the base's chunk index file
	first   map[uint64]uint64
}

func loadBaseIndex(b *base.Base) (*baseIndex, error) {
	bi := &baseIndex{first: map[uint64]uint64{}}
	for im, name := range []string{base.DiskIndexFile, base.MemoryIndexFile} {
		d, err := os.ReadFile(b.Path(name))
		if err != nil {
			return nil, fmt.Errorf("base %s: %w", b.ID, err)
		}
		bi.digests = append(bi.digests, d)
		for i := 0; i+chunk.DigestSize <= len(d); i += chunk.DigestSize {
			k := binary.LittleEndian.Uint64(d[i:])
			if _, ok := bi.first[k]; !ok {
				bi.first[k] = uint64(im)<<48 | uint64(i/chunk.DigestSize)
			}
		}
	}
	return bi, nil
}

func (bi *baseIndex) at(im int, c int64) []byte {
	return bi.digests[im][c*chunk.DigestSize : (c+1)*chunk.DigestSize]
}

// find returns a base chunk with digest d.
func (bi *baseIndex) find(d chunk.Digest) (im int, c int64, ok bool) {
	v, ok := bi.first[binary.LittleEndian.Uint64(d[:])]
	if !ok {
		return 0, 0, false
	}
	im, c = int(v>>48), int64(v&(1<<48-1))
	return im, c, bytes.Equal(bi.at(im, c), d[:])
}

func readChunk(ctx context.Context, img *cloudletfs.Image, c int64) ([]byte, error) {
	buf := make([]byte, min(chunk.Size, img.Size()-c*chunk.Size))
	if _, err := img.ReadAt(ctx, buf, c*chunk.Size); err != nil {
		return nil, err
	}
	return buf, nil
}

// diff classifies every modified chunk and returns the overlay entries. Chunks are taken in
// place order (image, then chunk number), so content at several places is stored at the
// lowest (the disk image's copy of a file rather than its page-cache pages, which land
// wherever the guest's allocator had room) and the others refer to it. The stored chunks
// also go into blobs in place order (overlay.Write's default): the order in which the capture
// run first touched them said nothing of what a resume touches first (measured on the test
// app: in either order the last chunk of the recorded working set arrived with the last
// blob), and place order keeps a file's chunks together, so that the next version of an app
// shares whole blobs with this one in a chunk cache (see bench/NOTES.md).
func diff(ctx context.Context, fsys *cloudletfs.FS, b *base.Base, p base.Progress) ([]overlay.Entry, DiffStats, error) {
	var st DiffStats
	bi, err := loadBaseIndex(b)
	if err != nil {
		return nil, st, err
	}
	imgs := fsys.Images()
	imageNo := map[string]int{}
	for i, img := range imgs {
		imageNo[img.Name()] = i
	}
	modified := append([]cloudletfs.ChunkEvent(nil), fsys.Trace().Modified...)
	sort.Slice(modified, func(i, j int) bool {
		ii, ij := imageNo[modified[i].Image], imageNo[modified[j].Image]
		return ii < ij || ii == ij && modified[i].Chunk < modified[j].Chunk
	})

	if p != nil {
		p.Begin("diff", int64(len(modified)))
		defer p.End()
	}
	var entries []overlay.Entry
	self := map[chunk.Digest][2]int64{}
	zero := make([]byte, chunk.Size)
	for _, ev := range modified {
		if err := ctx.Err(); err != nil {
			return nil, st, err
		}
		if p != nil {
			p.Add(1)
		}
		im := imageNo[ev.Image]
		data, err := readChunk(ctx, imgs[im], ev.Chunk)
		if err != nil {
			return nil, st, fmt.Errorf("read modified chunk %d of %s: %w", ev.Chunk, ev.Image, err)
		}
		st.Dirty++
		d := chunk.Sum(data)
		if bytes.Equal(bi.at(im, ev.Chunk), d[:]) {
			st.Unchanged++
			continue
		}
		e := overlay.Entry{Image: uint8(im), Index: ev.Chunk, Digest: d}
		if bytes.Equal(data, zero[:len(data)]) {
			e.Kind = overlay.KindZero
			st.Zero++
		} else if bim, bc, ok := bi.find(d); ok && chunkLen(imgs[bim], bc) == int64(len(data)) {
			e.Kind, e.BaseImage, e.BaseIndex = overlay.KindBase, uint8(bim), bc
			st.BaseDedup++
		} else if same, ok := self[d]; ok {
			e.Kind, e.SameImage, e.SameIndex = overlay.KindSelf, uint8(same[0]), same[1]
			st.SelfDedup++
		} else {
			e.Kind = overlay.KindBlob
			self[d] = [2]int64{int64(im), ev.Chunk}
			st.Stored++
		}
		entries = append(entries, e)
	}
	return entries, st, nil
}

func chunkLen(img *cloudletfs.Image, c int64) int64 { return min(chunk.Size, img.Size()-c*chunk.Size) }
