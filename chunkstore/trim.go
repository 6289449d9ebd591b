package chunkstore

import (
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cloudlet/cloudlet/chunk"
)

// lockName is the lock file of eviction, in the store's directory.
const lockName = "lock"

// entry is one chunk file as a listing found it.
type entry struct {
	path string
	size int64
	used time.Time
}

// Trim evicts the least recently used entries until the directory is within the bound. It
// waits for a trim running in another process to end first.
func (s *Store) Trim() error {
	s.trim.Lock()
	defer s.trim.Unlock()
	s.added.Store(0)
	return s.trimWith(unix.LOCK_EX)
}

// trimLocked is the background trim: if another process is trimming, its listing covers what
// this Store added, and this one leaves the work to it. s.trim is held.
func (s *Store) trimLocked() error { return s.trimWith(unix.LOCK_EX | unix.LOCK_NB) }

func (s *Store) trimWith(how int) error {
	lock, err := os.OpenFile(filepath.Join(s.dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("trim: %w", err)
	}
	defer lock.Close() // releases the lock
	if err := unix.Flock(int(lock.Fd()), how); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil
		}
		return fmt.Errorf("trim: lock %s: %w", lock.Name(), err)
	}
	entries, total, err := s.list()
	if err != nil {
		return fmt.Errorf("trim: %w", err)
	}
	if total > s.maxBytes {
		// Oldest first; equal times by name, so that the order is the same in every process.
		slices.SortFunc(entries, func(a, b entry) int {
			return cmp.Or(a.used.Compare(b.used), cmp.Compare(a.path, b.path))
		})
		var newest time.Time
		defer func() {
			if !newest.IsZero() {
				// A set whose tag's time is up to TouchEvery after an evicted chunk's last use
				// may have held it: puts and reads refresh a chunk only once per TouchEvery.
				s.dropTags(newest.Add(s.touchEvery))
			}
		}()
		for _, e := range entries {
			if total <= s.maxBytes {
				break
			}
			if fi, err := os.Lstat(e.path); err != nil || fi.ModTime().After(e.used) {
				continue // gone, or used since the listing
			}
			if err := os.Remove(e.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("trim: %w", err)
			}
			total -= e.size
			s.evicted.Add(1)
			newest = e.used
		}
	}
	s.usage.Store(total)
	return nil
}

// list returns every entry of the store and their total size, and removes temporary files
// that a dead writer left.
func (s *Store) list() ([]entry, int64, error) {
	var entries []entry
	var total int64
	for i := range 256 {
		dir := filepath.Join(s.dir, hex.EncodeToString([]byte{byte(i)}))
		des, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		for _, de := range des {
			fi, err := de.Info()
			if err != nil {
				continue // removed since the listing
			}
			path := filepath.Join(dir, de.Name())
			switch {
			case strings.HasPrefix(de.Name(), tempPrefix):
				if s.now().Sub(fi.ModTime()) > tempAge {
					os.Remove(path)
				}
			case fi.Mode().IsRegular() && len(de.Name()) == 2*chunk.DigestSize:
				entries = append(entries, entry{path: path, size: fi.Size(), used: fi.ModTime()})
				total += fi.Size()
			}
		}
	}
	return entries, total, nil
}
