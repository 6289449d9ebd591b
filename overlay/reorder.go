package overlay

import "context"

// Place names one chunk of an overlay's images.
type Place struct {
	Image string
	Index int64
}

// Reorder writes r's overlay again into the file at path (atomically, see WriteFile), with
// the stored chunks at first moved to the front of the prefetch order, in that order, as the
// working set: a recorded working set then comes in blobs of its own, fetched with one range
// request. A place that is a self reference stands for the stored chunk it repeats; places
// that are not stored chunks are skipped. The rest follow in place order (see Write): they
// are fetched in the background or on demand, and a next version of the app, profiled too,
// then shares whole blobs of them with this one. Blobs are staged in tmpDir. It returns the
// number of chunks in the working set.
func Reorder(ctx context.Context, r *Reader, first []Place, path, tmpDir string) (int, error) {
	ix := r.Index
	entries, at := ix.entries()
	order := ix.storedAt(first, at)
	ws := len(order)
	dev, err := r.Devstate()
	if err != nil {
		return 0, err
	}
	meta := Meta{BaseID: ix.BaseID, Images: ix.Images, Config: ix.Config, Codec: ix.Codec, WorkingSet: ws}
	_, err = WriteFile(ctx, path, tmpDir, meta, dev, entries, order, func(im uint8, i int64) ([]byte, error) {
		return r.ChunkData(at[placeKey{im, i}])
	})
	if err != nil {
		return 0, err
	}
	return ws, nil
}

// placeKey is a chunk's place by image number.
type placeKey struct {
	image uint8
	index int64
}

// entries turns the index's chunks back into the writer's entries, and says which entry is
// at each place.
func (ix *Index) entries() ([]Entry, map[placeKey]int) {
	at := make(map[placeKey]int, len(ix.Chunks))
	entries := make([]Entry, len(ix.Chunks))
	for e, c := range ix.Chunks {
		at[placeKey{c.Image, c.Index}] = e
		entries[e] = Entry{Image: c.Image, Index: c.Index, Kind: c.Kind, BaseImage: c.BaseImage, BaseIndex: c.BaseIndex, Digest: c.Digest}
		if c.Kind == KindSelf {
			t := ix.Chunks[c.Self]
			entries[e].SameImage, entries[e].SameIndex = t.Image, t.Index
		}
	}
	return entries, at
}

// storedAt lists the stored entries that places name, first mention first, each once.
func (ix *Index) storedAt(places []Place, at map[placeKey]int) []int {
	var order []int
	seen := map[int]bool{}
	for _, p := range places {
		im := ix.ImageIndex(p.Image)
		if im < 0 {
			continue
		}
		e, ok := at[placeKey{uint8(im), p.Index}]
		if !ok {
			continue
		}
		if ix.Chunks[e].Kind == KindSelf {
			e = int(ix.Chunks[e].Self)
		}
		if ix.Chunks[e].Kind == KindBlob && !seen[e] {
			seen[e] = true
			order = append(order, e)
		}
	}
	return order
}
