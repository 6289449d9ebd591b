package chunkstore

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/cloudlet/cloudlet/internal/atomicfile"
)

// tagDir holds tags: files, one per name, that say a caller put a whole set of chunks (a
// synthesis: every chunk of its overlay), with a little data of the caller's (a synthesis: the
// digests of the chunks that rebuild the overlay's index and device state). A tag is a hint,
// never trusted for bytes: its chunks may have been dropped or evicted since, and each is
// still checked when read.
const tagDir = "tags"

// maxTag bounds a tag's name.
const maxTag = 128

// MaxTagData bounds a tag's data: a tag with more is set without it.
const MaxTagData = 64 << 10

// validTag accepts names of lowercase hex digits only: a tag's name is a file name.
func validTag(name string) bool {
	if name == "" || len(name) > maxTag {
		return false
	}
	for _, c := range name {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Tag sets the tag name (lowercase hex, such as an overlay's ID), with data (nil: none), once
// the chunks put before it are written: the caller put or read (Get) every chunk of its set
// since the time since. Best effort, like Put.
func (s *Store) Tag(name string, since time.Time, data []byte) {
	if !validTag(name) {
		return
	}
	if len(data) > MaxTagData {
		data = nil
	}
	s.queueMu.RLock()
	defer s.queueMu.RUnlock()
	if s.closed {
		return
	}
	select {
	case s.queue <- putRequest{tag: name, since: since, data: bytes.Clone(data)}:
	default:
		s.dropped.Add(1)
	}
}

// Tagged says whether the tag name is set.
func (s *Store) Tagged(name string) bool {
	if !validTag(name) {
		return false
	}
	_, err := os.Lstat(filepath.Join(s.dir, tagDir, name))
	return err == nil
}

// TagData is the data of the tag name, if it is set.
func (s *Store) TagData(name string) ([]byte, bool) {
	if !validTag(name) {
		return nil, false
	}
	f, err := os.Open(filepath.Join(s.dir, tagDir, name))
	if err != nil {
		return nil, false
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxTagData+1))
	if err != nil || len(data) > MaxTagData {
		return nil, false
	}
	return data, true
}

// setTag writes a tag now. Its time is since: every chunk of its set was last used no earlier
// than since - TouchEvery (a put or a read refreshes a chunk older than that).
func (s *Store) setTag(name string, since time.Time, data []byte) {
	dir := filepath.Join(s.dir, tagDir)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		s.logf("chunk store: tag %s: %v", name, err)
		return
	}
	path := filepath.Join(dir, name)
	err := atomicfile.WriteFile(path, data)
	if err == nil {
		err = os.Chtimes(path, since, since)
	}
	if err != nil {
		s.logf("chunk store: tag %s: %v", name, err)
	}
}

// dropTags removes the tags whose time is no later than t: their sets may have held a chunk a
// trim evicted (see setTag). s.trim is held.
func (s *Store) dropTags(t time.Time) {
	dir := filepath.Join(s.dir, tagDir)
	des, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, de := range des {
		if fi, err := de.Info(); err == nil && !fi.ModTime().After(t) {
			os.Remove(filepath.Join(dir, de.Name()))
		}
	}
}
