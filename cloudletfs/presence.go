package cloudletfs

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// The presence map is the durable record of which chunks are in the cache file: one byte per
// chunk, 0 (not cached), 1 (present: delivered from the overlay) or 2 (modified by the VM).
// A byte is set only after the cache file has been fsynced with that chunk's data, so after a
// crash every marked chunk is trusted and every unmarked one falls back to its plan state
// (base, zero or pending): no byte is ever served from a chunk that was not durable.
//
// A byte per chunk rather than a bit keeps each update a single-byte write, which no crash can
// tear, at 256 KiB per GiB of image.
//
// present is a promise: the cache holds exactly the overlay's verified bytes. So a chunk is
// recorded with its latest state only (a batch entry that a later change overtook is
// dropped), and before the VM's first write to a chunk recorded present reaches the cache
// file, the record is durably downgraded to modified (see downgrade). modified promises
// nothing about the bytes: a re-run that discards the VM's writes fetches the chunk again.
const (
	presenceNone     = 0
	presencePresent  = 1
	presenceModified = 2
)

type presenceMap struct {
	f    *os.File
	path string

	// mu orders the map's writers (Sync's records, the VM's downgrades): whichever writes
	// last decides what a crash leaves.
	mu sync.Mutex
	b  []byte // guarded by mu: what the file holds
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
// fsynced the cache file first. latest is called with the map locked and returns the chunks
// to record: those whose state has not changed since, so no VM write that started after it
// can be overtaken by an older record.
func (p *presenceMap) record(latest func() []dirtyChunk) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	chunks := latest()
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

// downgrade durably records a chunk recorded present as modified, before the VM's bytes
// reach its place in the cache file. A chunk not recorded present costs nothing: no record
// trusts it, and Sync records only its latest state.
func (p *presenceMap) downgrade(c int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.b[c] != presencePresent {
		return nil
	}
	if _, err := p.f.WriteAt([]byte{presenceModified}, c); err != nil {
		return fmt.Errorf("%s: chunk %d: %w", p.path, c, err)
	}
	// fdatasync: the map's size never changes, so its data is all that must reach the disk.
	if err := unix.Fdatasync(int(p.f.Fd())); err != nil {
		return fmt.Errorf("%s: fdatasync: %w", p.path, err)
	}
	// Only now: a failed downgrade stays "present" here, so the next write tries it again.
	p.b[c] = presenceModified
	return nil
}

// forget clears the given chunks' bytes (for discarded VM writes).
func (p *presenceMap) forget(chunks []int64) error {
	if len(chunks) == 0 {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	lo, hi := chunks[0], chunks[0]
	for _, c := range chunks {
		p.b[c] = presenceNone
		lo, hi = min(lo, c), max(hi, c)
	}
	return p.write(lo, hi)
}

// write writes the span [lo, hi] of the map and fsyncs it; p.mu is held.
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
