package base

import (
	"context"
	"fmt"
	"io"
)

// ParseManifest decodes and checks a manifest that came from elsewhere (at most 1 MiB, every
// size within the limits), returning it with the base ID it names.
func ParseManifest(raw []byte) (*Manifest, string, error) { return parseManifest(raw) }

// CheckRoom refuses a base whose files, as manifest m sizes them, do not fit in the free space
// of the store's filesystem (less a reserve for running VMs).
func (s *Store) CheckRoom(m *Manifest) error {
	return checkRoom(m, func() (int64, error) { return freeBytes(s.home) })
}

// ImportFiles adds the base whose manifest is raw, reading each of its files from open(name):
// for bases that travel as separate files (a registry's blobs) rather than as one export
// archive. Like Import, it checks the free space before anything is written and every file
// against the manifest before the base becomes visible, and changes nothing when the base is
// already here. It returns the base and whether it was new.
func (s *Store) ImportFiles(ctx context.Context, raw []byte, open func(name string) (io.ReadCloser, error), p Progress) (*Base, bool, error) {
	p = OrNone(p)
	return s.importBase(raw, "base manifest", func() (int64, error) { return freeBytes(s.home) }, func(m *Manifest, d *Draft) error {
		for _, name := range sortedNames(m) {
			if err := importFile(ctx, d, name, m.Files[name], open, p); err != nil {
				return err
			}
		}
		return nil
	})
}

func importFile(ctx context.Context, d *Draft, name string, want File, open func(string) (io.ReadCloser, error), p Progress) error {
	r, err := open(name)
	if err != nil {
		return fmt.Errorf("import %s: %w", name, err)
	}
	defer r.Close()
	p.Begin("import "+name, want.Size)
	// One byte more than the manifest says is read, so that a longer file is caught.
	got, err := copySparse(ctx, d.Path(name), &progressReader{ctx: ctx, r: io.LimitReader(r, want.Size+1), p: p}, nil)
	p.End()
	if err != nil {
		return fmt.Errorf("import %s: %w", name, err)
	}
	return checkImported(name, got, want)
}
