// Package atomicfile writes files that readers, and a crash, see whole or not at all: the
// bytes go to a temporary file in the target's directory, are fsynced, and the file is
// renamed into place, then the directory is fsynced so that the rename itself is durable.
// Files are private (0600) whatever the umask and whatever mode a replaced file had: they
// hold tokens, overlays and guest data.
//
// It wraps github.com/google/renameio, which does the temporary file, the fsync and the
// rename, and adds what it leaves to the caller: the temporary file always beside the target
// (never in $TMPDIR, which may be another disk or be cleaned under us), the fixed mode, and
// the directory's fsync.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

// Mode is the mode of every file written here.
const Mode os.FileMode = 0o600

// File is a file being written; it appears at its path only on Commit.
type File struct {
	*renameio.PendingFile
	path string
}

// Create starts a file that will replace path on Commit.
func Create(path string) (*File, error) {
	pf, err := renameio.NewPendingFile(path,
		renameio.WithTempDir(filepath.Dir(path)),
		renameio.WithStaticPermissions(Mode))
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return &File{PendingFile: pf, path: path}, nil
}

// Commit makes the file durable and puts it in place, replacing any file there.
func (f *File) Commit() error {
	if err := f.CloseAtomicallyReplace(); err != nil {
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	return syncDir(filepath.Dir(f.path))
}

// Abort removes the temporary file; after Commit it does nothing. Defer it after Create.
func (f *File) Abort() { f.Cleanup() }

// WriteFile writes data to path atomically, replacing any file there.
func WriteFile(path string, data []byte) error {
	f, err := Create(path)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Commit()
}

// WriteNew writes data to path atomically only if path does not exist: it links the finished
// file into place, and a link, unlike a rename, never replaces a file that another process
// made meanwhile. The error then wraps os.ErrExist.
func WriteNew(path string, data []byte) error {
	f, err := Create(path)
	if err != nil {
		return err
	}
	defer f.Abort() // the temporary name goes in any case; the link keeps the file
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Link(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

// syncDir makes the directory entries in dir durable: a rename or link is not, until then.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	err = d.Sync()
	if err = errors.Join(err, d.Close()); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}
