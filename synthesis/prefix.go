package synthesis

import (
	"bytes"
	"context"
	"encoding/binary"

	"github.com/cloudlet/cloudlet/chunk"
)

// A synthesis of an overlay that the chunk store holds whole needs from the origin only what
// the store cannot pin by digest: the overlay's index and device state. So the store keeps
// those too, cut into chunk-sized pieces put like any chunk, with the pieces' digests (the
// recipe) as the data of the overlay's tag. A later synthesis then fetches only the probe's
// first bytes (the header, which pins the index, which pins the device state and every
// chunk): nothing the store returns is used unverified.

// maxStoredPrefix bounds the index and device state a recipe may rebuild: its digests fit in
// a tag's data, and its bytes are held in memory.
const maxStoredPrefix = 8 << 20

// keep marks where the overlay's index and device state end: the window keeps those bytes
// when it drops its buffer, for prefix.
func (w *window) keep(end int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.keepEnd = end
	if limit := w.keepLimitLocked(); w.kept != nil && int64(len(w.kept)) > limit-w.start {
		w.kept = bytes.Clone(w.kept[:max(limit-w.start, 0)])
	}
}

// keepLimitLocked is how far kept may reach: to the device state's end once keep said where
// that is, and as far as a recipe may rebuild before. A window without a chunk store, or of an
// overlay whose index and device state are too large for a recipe, keeps nothing.
func (w *window) keepLimitLocked() int64 {
	switch {
	case w.stored == nil || w.keepEnd > maxStoredPrefix:
		return 0
	case w.keepEnd > 0:
		return w.keepEnd
	}
	return maxStoredPrefix
}

// keepLocked keeps, as buf is dropped, what of it lies before the device state's end. Open
// may read the whole buffer before keep was called (when it held the index alone): then all
// of it is kept, and keep trims it.
func (w *window) keepLocked() {
	if end := w.keepLimitLocked(); end > w.start {
		n := min(end-w.start, int64(w.filled))
		if n == int64(len(w.buf)) {
			w.kept = w.buf
		} else {
			w.kept = bytes.Clone(w.buf[:n])
		}
	}
}

// extendKept adds to kept a read that the origin served right after it, such as the device
// state read after an index the buffer held: a store whose recipe broke gets it again.
func (w *window) extendKept(p []byte, off int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf == nil && w.kept != nil && off == w.start+int64(len(w.kept)) && off+int64(len(p)) <= w.keepLimitLocked() {
		w.kept = append(w.kept, p...)
	}
}

// fromStore says whether the window serves the overlay's index and device state from the
// chunk store.
func (w *window) fromStore() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fromStored
}

// prefix returns the overlay's bytes up to the kept end (header, index, device state), from
// what the window read, or nil if it does not have them all.
func (w *window) prefix(ctx context.Context) []byte {
	w.mu.Lock()
	end, start := w.keepEnd, w.start
	if end <= start || end > maxStoredPrefix {
		w.mu.Unlock()
		return nil
	}
	var rest []byte
	switch {
	case w.kept != nil:
		rest = w.kept
	case w.buf != nil:
		rest = w.buf[:w.filled]
	}
	out := make([]byte, start, end)
	out = append(out, rest[:min(int64(len(rest)), end-start)]...)
	w.mu.Unlock()
	if int64(len(out)) != end {
		return nil
	}
	// The first bytes came with the probe: the origin has them at hand.
	if err := w.Origin.ReadAt(ctx, out[:start], 0); err != nil {
		return nil
	}
	return out
}

// storePrefix puts b's pieces into store and returns the recipe that rebuilds it.
func storePrefix(store ChunkStore, b []byte) []byte {
	recipe := binary.LittleEndian.AppendUint64(nil, uint64(len(b)))
	for off := 0; off < len(b); off += chunk.Size {
		piece := b[off:min(off+chunk.Size, len(b))]
		d := chunk.Sum(piece)
		store.Put(d, piece)
		recipe = append(recipe, d[:]...)
	}
	return recipe
}

// storedPrefix returns a function that rebuilds an overlay's prefix from store by its tag's
// recipe, or nil when anything is missing or out of bounds.
func storedPrefix(store ChunkStore) func(id string) []byte {
	return func(id string) []byte {
		recipe, ok := store.TagData(id)
		if !ok || len(recipe) < 8 {
			return nil
		}
		n := binary.LittleEndian.Uint64(recipe)
		pieces := (n + chunk.Size - 1) / chunk.Size
		if n == 0 || n > maxStoredPrefix || uint64(len(recipe)-8) != pieces*32 {
			return nil
		}
		b := make([]byte, n)
		for i := range pieces {
			var d chunk.Digest
			copy(d[:], recipe[8+32*i:])
			piece := b[i*chunk.Size : min((i+1)*chunk.Size, n)]
			if got, ok := store.Get(d, piece); !ok || got != len(piece) {
				return nil
			}
		}
		return b
	}
}
