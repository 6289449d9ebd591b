package chunkstore

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
)

// TouchEvery is how stale an entry's recency may get before a Get refreshes it: an LRU order
// within a minute does not matter for a cache of GiBs, and skipping the write keeps a read at
// one open, one fstat and one read.
const TouchEvery = time.Minute

// sliceDiv sets how much a Store adds between its background trims: a sixteenth of the bound.
// A trim lists every entry (measured here: 11 µs an entry on a busy disk, 10 s for the million
// entries of a 4 GiB store), so trims must be rare; the directory may exceed its bound by a
// slice per writing process until the next trim.
const sliceDiv = 16

// tempPrefix starts the names of files being written. One older than tempAge was left by a
// process that died while writing it, and a trim removes it.
const (
	tempPrefix = ".tmp-"
	tempAge    = time.Hour
)

// Store is a chunk store on one directory. Its methods are safe for concurrent use, and other
// Stores (in this process or others) may use the same directory at once.
type Store struct {
	// Fixed after construction.
	dir        string
	maxBytes   int64
	slice      int64 // bytes added between background trims
	now        func() time.Time
	touchEvery time.Duration
	logf       func(format string, args ...any)

	added atomic.Int64 // bytes put since the last trim started
	trim  sync.Mutex   // held by the one trim of this Store at a time
	wg    sync.WaitGroup

	// Puts are written by one goroutine, off the fetch path: a create and a rename cost
	// 0.1 to 1 ms on a busy disk, more than fetching the chunk did.
	// queue is never closed: a Flush sends to it without a lock (it may wait for room, and a
	// lock held meanwhile would stall Close and every Put behind it). Close closes closing
	// instead, and the writer then writes what is queued and ends.
	queueMu sync.RWMutex // the non-blocking senders' side of queue
	queue   chan putRequest
	closed  bool          // guarded by queueMu (write lock): closing is closed
	closing chan struct{} // closed by Close
	written chan struct{} // closed when the writer has ended

	hits, misses, corrupt, puts, putErrors, dropped, evicted, usage atomic.Int64
}

// putQueue is how many chunks wait to be written at most (16 MiB); a Put beyond it is dropped:
// the store is a cache, and a fetch must not wait for a slow disk.
const putQueue = 4096

// putRequest is a chunk to write, a tag to set (tag set) once the chunks queued before it are
// written, or (flushed set) a marker that closes flushed once every chunk queued before it is
// written.
type putRequest struct {
	d       chunk.Digest
	data    []byte
	tag     string
	since   time.Time
	flushed chan struct{}
}

// Open opens (creating it if needed) the store in dir, bounded to maxBytes of chunk data.
func Open(dir string, maxBytes int64) (*Store, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("chunk store %s: size bound %d, want > 0", dir, maxBytes)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("chunk store: %w", err)
	}
	s := &Store{dir: dir, maxBytes: maxBytes, slice: max(maxBytes/sliceDiv, chunk.Size),
		now: time.Now, touchEvery: TouchEvery, logf: log.Printf}
	s.usage.Store(-1)
	s.queue, s.closing, s.written = make(chan putRequest, putQueue), make(chan struct{}), make(chan struct{})
	go s.writer()
	return s, nil
}

// Close writes the chunks queued so far and waits for a background trim to end. Puts after
// Close are dropped. The store keeps no open files.
func (s *Store) Close() error {
	s.queueMu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.queueMu.Unlock()
	<-s.written
	s.wg.Wait()
	if n := s.dropped.Load(); n > 0 {
		s.logf("chunk store %s: %d chunks were not stored: the disk was slower than the fetch", s.dir, n)
	}
	return nil
}

// writer writes queued chunks until Close, then what is queued at that time.
func (s *Store) writer() {
	defer close(s.written)
	for {
		select {
		case req := <-s.queue:
			s.handle(req)
		case <-s.closing:
			for {
				select {
				case req := <-s.queue:
					s.handle(req)
				default:
					return
				}
			}
		}
	}
}

func (s *Store) handle(req putRequest) {
	switch {
	case req.flushed != nil:
		close(req.flushed)
	case req.tag != "":
		s.setTag(req.tag, req.since, req.data)
	default:
		s.put(req.d, req.data)
	}
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// path is where the entry of d lives.
func (s *Store) path(d chunk.Digest) string {
	h := hex.EncodeToString(d[:])
	return filepath.Join(s.dir, h[:2], h)
}

// Get reads the chunk with digest d into p and returns its length. ok is false if the store
// does not have it, if p is too short for it, or if the entry on disk was not the chunk (it is
// then deleted): the bytes returned always have digest d.
func (s *Store) Get(d chunk.Digest, p []byte) (n int, ok bool) {
	path := s.path(d)
	f, err := os.Open(path)
	if err != nil {
		s.misses.Add(1)
		return 0, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		s.misses.Add(1)
		return 0, false
	}
	size := fi.Size()
	if size <= 0 || size > chunk.Size {
		s.drop(path, d, fmt.Sprintf("%d bytes, want 1 to %d", size, chunk.Size))
		return 0, false
	}
	if int64(len(p)) < size {
		s.misses.Add(1)
		return 0, false
	}
	if _, err := io.ReadFull(f, p[:size]); err != nil {
		s.drop(path, d, err.Error())
		return 0, false
	}
	if got := chunk.Sum(p[:size]); got != d {
		clear(p[:size])
		s.drop(path, d, fmt.Sprintf("digest got %s", got))
		return 0, false
	}
	s.touch(path, fi.ModTime())
	s.hits.Add(1)
	return int(size), true
}

// Has says whether the store has an entry for d, without reading or checking it: Get may still
// find it absent (evicted since, or corrupt).
func (s *Store) Has(d chunk.Digest) bool {
	_, err := os.Lstat(s.path(d))
	return err == nil
}

// drop deletes an entry that is not the chunk it is filed as.
func (s *Store) drop(path string, d chunk.Digest, why string) {
	s.corrupt.Add(1)
	s.misses.Add(1)
	s.logf("chunk store: entry %s is corrupt (%s): removed", d, why)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.logf("chunk store: remove corrupt entry %s: %v", d, err)
	}
}

// touch marks an entry as used now, unless it was marked recently.
func (s *Store) touch(path string, last time.Time) {
	now := s.now()
	if now.Sub(last) < s.touchEvery {
		return
	}
	// Best effort: a failed touch only makes the entry look older.
	_ = os.Chtimes(path, now, now)
}

// Put stores a copy of a chunk that the caller has verified to have digest d, soon: it is
// queued, and written by the store's own goroutine. It is best effort: a full queue drops
// it, and an error writing it is logged and counted.
func (s *Store) Put(d chunk.Digest, data []byte) {
	if len(data) == 0 || len(data) > chunk.Size {
		return
	}
	s.queueMu.RLock()
	defer s.queueMu.RUnlock()
	if s.closed {
		s.dropped.Add(1)
		return
	}
	select {
	case s.queue <- putRequest{d: d, data: bytes.Clone(data)}:
	default:
		s.dropped.Add(1)
	}
}

// Flush waits until the chunks put so far are written (or failed), or ctx ends.
func (s *Store) Flush(ctx context.Context) error {
	flushed := make(chan struct{})
	select {
	case s.queue <- putRequest{flushed: flushed}:
	case <-s.closing: // Close writes them
	case <-ctx.Done():
		return ctx.Err()
	}
	// After Close, or with a marker queued as Close came (which may be left in the queue),
	// the writer's end says the chunks before it were written.
	select {
	case <-flushed:
	case <-s.written:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// put writes a chunk now.
func (s *Store) put(d chunk.Digest, data []byte) {
	if len(data) == 0 || len(data) > chunk.Size {
		return
	}
	path := s.path(d)
	if fi, err := os.Lstat(path); err == nil {
		s.touch(path, fi.ModTime())
		return
	}
	if err := s.write(path, data); err != nil {
		s.putErrors.Add(1)
		s.logf("chunk store: put %s: %v", d, err)
		return
	}
	s.puts.Add(1)
	s.added.Add(int64(len(data)))
	s.maybeTrim()
}

// maybeTrim starts a background trim once a slice was added since the last one began, unless
// one runs (it checks again when it ends, so what was added meanwhile is not forgotten).
func (s *Store) maybeTrim() {
	if s.added.Load() < s.slice || !s.trim.TryLock() {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for s.added.Load() >= s.slice {
			s.added.Store(0) // before the listing: what is added from now on, it may miss
			if err := s.trimLocked(); err != nil {
				s.logf("chunk store: %v", err)
				break
			}
		}
		s.trim.Unlock()
		s.maybeTrim()
	}()
}

// write puts data at path through a temporary file and a rename.
func (s *Store) write(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tempPrefix+"*")
	if errors.Is(err, fs.ErrNotExist) {
		if err = os.Mkdir(dir, 0o700); err == nil || errors.Is(err, fs.ErrExist) {
			f, err = os.CreateTemp(dir, tempPrefix+"*")
		}
	}
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err = errors.Join(err, f.Close()); err == nil {
		now := s.now()
		if err = os.Chtimes(tmp, now, now); err == nil {
			err = os.Rename(tmp, path)
		}
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// Stats count what a Store did since Open (this process only), and the size of the whole
// directory as its last trim found it.
type Stats struct {
	Hits      int64 `json:"hits"`
	Misses    int64 `json:"misses"`
	Corrupt   int64 `json:"corrupt"` // entries found not to be their chunk, and removed
	Puts      int64 `json:"puts"`
	PutErrors int64 `json:"put_errors"`
	Dropped   int64 `json:"dropped"` // puts not written: the queue was full, or the store closed
	Evicted   int64 `json:"evicted"`
	// Bytes is the chunk data in the directory after the last trim, -1 before any.
	Bytes    int64 `json:"bytes"`
	MaxBytes int64 `json:"max_bytes"`
}

// Stats returns the counters so far.
func (s *Store) Stats() Stats {
	return Stats{Hits: s.hits.Load(), Misses: s.misses.Load(), Corrupt: s.corrupt.Load(), Puts: s.puts.Load(),
		PutErrors: s.putErrors.Load(), Dropped: s.dropped.Load(), Evicted: s.evicted.Load(), Bytes: s.usage.Load(), MaxBytes: s.maxBytes}
}

// MaxBytes is the store's size bound.
func (s *Store) MaxBytes() int64 { return s.maxBytes }
