package synthesis

import (
	"bytes"
	"encoding/binary"

	"github.com/cloudlet/cloudlet/chunk"
)

// A synthesis of an overlay that the chunk store holds whole needs from the origin only what
// the store cannot pin by digest: the overlay's index, device state and chunk digest table.
// So the store keeps those too, cut into chunk-sized pieces put like any chunk, with the
// pieces' digests (the recipe) as the data of the overlay's tag. A later synthesis then
// fetches only the probe's first bytes (the header, which pins the index, which pins the
// device state, the digest table and so every chunk): nothing the store returns is used
// unverified.

// maxStoredPrefix bounds the index and device state a recipe may rebuild, and the digest table
// beside them: its digests fit in a tag's data, and its bytes are held in memory.
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

// storedTable is the digest table the chunk store gave with the index, or nil.
func (w *window) storedTable() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.table
}

// prefix returns the overlay's bytes up to the kept end (header, index, device state): head,
// the bytes Open read first (the window streams from their end on), then what the window
// read; or nil if it does not have them all.
func (w *window) prefix(head []byte) []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	end, start := w.keepEnd, w.start
	if end <= 0 || end > maxStoredPrefix || int64(len(head)) < min(start, end) {
		return nil
	}
	out := bytes.Clone(head[:min(int64(len(head)), end)])
	if int64(len(out)) == end {
		return out
	}
	var rest []byte
	switch {
	case w.kept != nil:
		rest = w.kept
	case w.buf != nil:
		rest = w.buf[:w.filled]
	}
	if int64(len(rest)) < end-start {
		return nil
	}
	return append(out, rest[int64(len(out))-start:end-start]...)
}

// storePrefix puts the pieces of the overlay's prefix and its digest table (nil: not loaded)
// into store and returns the recipe that rebuilds both: their lengths, then the digests of
// the pieces of the two laid end to end.
func storePrefix(store ChunkStore, prefix, table []byte) []byte {
	if int64(len(prefix)+len(table)) > maxStoredPrefix {
		return nil
	}
	b := append(bytes.Clone(prefix), table...)
	recipe := binary.LittleEndian.AppendUint64(nil, uint64(len(prefix)))
	recipe = binary.LittleEndian.AppendUint64(recipe, uint64(len(table)))
	for off := 0; off < len(b); off += chunk.Size {
		piece := b[off:min(off+chunk.Size, len(b))]
		d := chunk.Sum(piece)
		store.Put(d, piece)
		recipe = append(recipe, d[:]...)
	}
	return recipe
}

// storedPrefix returns a function that rebuilds an overlay's prefix and digest table from
// store by its tag's recipe, or nils when anything is missing or out of bounds.
func storedPrefix(store ChunkStore) func(id string) (prefix, table []byte) {
	return func(id string) ([]byte, []byte) {
		recipe, ok := store.TagData(id)
		if !ok || len(recipe) < 16 {
			return nil, nil
		}
		np, nt := binary.LittleEndian.Uint64(recipe), binary.LittleEndian.Uint64(recipe[8:])
		if np == 0 || np > maxStoredPrefix || nt > maxStoredPrefix-np {
			return nil, nil
		}
		n := np + nt
		pieces := (n + chunk.Size - 1) / chunk.Size
		if uint64(len(recipe)-16) != pieces*32 {
			return nil, nil
		}
		b := make([]byte, n)
		for i := range pieces {
			var d chunk.Digest
			copy(d[:], recipe[16+32*i:])
			piece := b[i*chunk.Size : min((i+1)*chunk.Size, n)]
			if got, ok := store.Get(d, piece); !ok || got != len(piece) {
				return nil, nil
			}
		}
		return b[:np:np], b[np:]
	}
}
