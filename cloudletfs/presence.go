package cloudletfs

import (
	"fmt"
	"os"
)

// The presence map is the durable record of which chunks are in the cache file: one byte per
// chunk, 0 (not cached), 1 (present: delivered from the overlay) or 2 (modified by the VM).
// A byte is set only after the cache file has been fsynced with that chunk's data, so after a
// crash every marked chunk is trusted and every unmarked one falls back to its plan state
// (base, zero or pending): no byte is ever served from a chunk that was not durable.
//
// A byte per chunk rather than a bit keeps each update a single-byte write, which no crash can
// tear, at 256 KiB per GiB of image.
const (
	presenceNone     = 0
	presencePresent  = 1
	presenceModified = 2
)

type presenceMap struct {
	f    *os.File
	path string
	b    []byte // what the file holds
}

// openPresence opens or creates the map for n chunks.
func openPresence(path string, n int64) (*presenceMap, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	b := make([]byte, n)
	switch st.Size() {
	case 0:
		if err := f.Truncate(n); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	case n:
		if _, err := f.ReadAt(b, 0); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	default:
		f.Close()
		return nil, fmt.Errorf("%s: %d bytes, want %d (one per chunk)", path, st.Size(), n)
	}
	for i, v := range b {
		if v > presenceModified {
			f.Close()
			return nil, fmt.Errorf("%s: chunk %d has bad presence value %d", path, i, v)
		}
	}
	return &presenceMap{f: f, path: path, b: b}, nil
}

// state returns the chunk's state after a restart, given its plan state.
func (p *presenceMap) state(chunk int64, plan State) State {
	switch p.b[chunk] {
	case presencePresent:
		return StatePresent
	case presenceModified:
		return StateModified
	}
	return plan
}

// record marks chunks durable with their states and writes the changed span. The caller has
// fsynced the cache file first.
func (p *presenceMap) record(chunks []dirtyChunk) error {
	if len(chunks) == 0 {
		return nil
	}
	lo, hi := chunks[0].c, chunks[0].c
	for _, d := range chunks {
		v := byte(presencePresent)
		if d.s == StateModified {
			v = presenceModified
		}
		p.b[d.c] = v
		lo, hi = min(lo, d.c), max(hi, d.c)
	}
	return p.write(lo, hi)
}

// forget clears the given chunks' bytes (for discarded VM writes).
func (p *presenceMap) forget(chunks []int64) error {
	if len(chunks) == 0 {
		return nil
	}
	lo, hi := chunks[0], chunks[0]
	for _, c := range chunks {
		p.b[c] = presenceNone
		lo, hi = min(lo, c), max(hi, c)
	}
	return p.write(lo, hi)
}

func (p *presenceMap) write(lo, hi int64) error {
	if _, err := p.f.WriteAt(p.b[lo:hi+1], lo); err != nil {
		return fmt.Errorf("%s: %w", p.path, err)
	}
	if err := p.f.Sync(); err != nil {
		return fmt.Errorf("%s: fsync: %w", p.path, err)
	}
	return nil
}

func (p *presenceMap) Close() error { return p.f.Close() }
