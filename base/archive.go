package base

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
)

// An export is a zstd-compressed tar stream: manifest.json first, then the files of the
// manifest in a fixed order. The manifest travels byte for byte, so an import has the same ID.
// zstd makes the zero-filled parts of the images nearly free.

// Export writes the base to w.
func (b *Base) Export(ctx context.Context, w io.Writer, p Progress) error {
	p = OrNone(p)
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return fmt.Errorf("export base %s: %w", b.ID, err)
	}
	tw := tar.NewWriter(zw)
	raw, err := os.ReadFile(b.Path(ManifestFile))
	if err != nil {
		return fmt.Errorf("export base %s: %w", b.ID, err)
	}
	hdr := func(name string, size int64) *tar.Header {
		return &tar.Header{Name: name, Size: size, Mode: 0o644, ModTime: b.Manifest.Created, Typeflag: tar.TypeReg}
	}
	if err := tw.WriteHeader(hdr(ManifestFile, int64(len(raw)))); err != nil {
		return fmt.Errorf("export base %s: %w", b.ID, err)
	}
	if _, err := tw.Write(raw); err != nil {
		return fmt.Errorf("export base %s: %w", b.ID, err)
	}
	for _, name := range sortedNames(b.Manifest) {
		if err := exportFile(ctx, tw, hdr(name, b.Manifest.Files[name].Size), b.Path(name), p); err != nil {
			return fmt.Errorf("export base %s: %s: %w", b.ID, name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("export base %s: %w", b.ID, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("export base %s: %w", b.ID, err)
	}
	return nil
}

func exportFile(ctx context.Context, tw *tar.Writer, h *tar.Header, path string, p Progress) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	p.Begin("export "+h.Name, h.Size)
	defer p.End()
	// A file that changed size since the manifest was written makes CopyN fail: the export
	// never silently carries bytes the manifest does not describe.
	_, err = io.CopyN(tw, &progressReader{ctx: ctx, r: f, p: p}, h.Size)
	return err
}

// ImportError says what is wrong with an archive handed to Import.
type ImportError struct {
	Reason string
	Err    error
}

func (e *ImportError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %v", e.Reason, e.Err)
	}
	return e.Reason
}
func (e *ImportError) Unwrap() error { return e.Err }

// Import reads an export and adds its base to the store. It returns the base and whether it
// was new: importing a base that is already there changes nothing. Every file's size is
// checked against the manifest's limits and the store's free space before anything is
// written, and every file against the manifest before the base becomes visible.
func (s *Store) Import(ctx context.Context, r io.Reader, p Progress) (*Base, bool, error) {
	return s.importArchive(ctx, r, p, func() (int64, error) { return freeBytes(s.home) })
}

// importArchive is Import with the free space of the store's filesystem taken from free.
func (s *Store) importArchive(ctx context.Context, r io.Reader, p Progress, free func() (int64, error)) (*Base, bool, error) {
	p = OrNone(p)
	zr, err := zstd.NewReader(r, zstd.WithDecoderMaxMemory(64<<20))
	if err != nil {
		return nil, false, &ImportError{"not a base export (zstd)", err}
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil {
		return nil, false, corruptArchive(err)
	}
	if h.Name != ManifestFile || h.Typeflag != tar.TypeReg || h.Size > maxManifestBytes {
		return nil, false, &ImportError{Reason: fmt.Sprintf("archive starts with %q (%d bytes), want %s of at most %d bytes", h.Name, h.Size, ManifestFile, maxManifestBytes)}
	}
	raw, err := io.ReadAll(io.LimitReader(tr, maxManifestBytes))
	if err != nil {
		return nil, false, corruptArchive(err)
	}
	return s.importBase(raw, "archive manifest", free, func(m *Manifest, d *Draft) error {
		return importEntries(ctx, tr, m, d, p)
	})
}

// importEntries writes the archive's files, after its manifest, into d.
func importEntries(ctx context.Context, tr *tar.Reader, m *Manifest, d *Draft, p Progress) error {
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return corruptArchive(err)
		}
		want, ok := m.Files[h.Name]
		if !ok || seen[h.Name] || h.Name != filepath.Base(h.Name) || h.Typeflag != tar.TypeReg {
			return &ImportError{Reason: fmt.Sprintf("archive holds unexpected entry %q", h.Name)}
		}
		if h.Size != want.Size {
			return &ImportError{Reason: fmt.Sprintf("%s: archive entry has %d bytes, manifest says %d", h.Name, h.Size, want.Size)}
		}
		seen[h.Name] = true
		p.Begin("import "+h.Name, h.Size)
		got, err := copySparse(ctx, d.Path(h.Name), &progressReader{ctx: ctx, r: tr, p: p}, nil)
		p.End()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return corruptArchive(fmt.Errorf("%s: %w", h.Name, err))
		}
		if got.Size < want.Size {
			return &ImportError{Reason: fmt.Sprintf("archive is truncated: %s has %d of %d bytes", h.Name, got.Size, want.Size)}
		}
		if err := checkImported(h.Name, got, want); err != nil {
			return err
		}
	}
	for name := range m.Files {
		if !seen[name] {
			return &ImportError{Reason: fmt.Sprintf("archive lacks %s", name)}
		}
	}
	return nil
}

// corruptArchive is a read error of an archive, as an ImportError that says what went wrong.
func corruptArchive(err error) error {
	if errors.Is(err, zstd.ErrMagicMismatch) {
		return &ImportError{"not a base export (not zstd-compressed)", err}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &ImportError{"archive is truncated", err}
	}
	return &ImportError{"archive is corrupt", err}
}

// importBase adds the base whose manifest is raw, unless it is here already: it checks the
// free space (free) before anything is written, has fill write the files into a draft, and
// seals the draft once fill has checked every file against the manifest. It returns the base
// and whether it was new. what names the manifest in errors.
func (s *Store) importBase(raw []byte, what string, free func() (int64, error), fill func(*Manifest, *Draft) error) (*Base, bool, error) {
	m, id, err := parseManifest(raw)
	if err != nil {
		return nil, false, &ImportError{what, err}
	}
	if b, err := s.Get(id); err == nil {
		return b, false, nil
	}
	if err := checkRoom(m, free); err != nil {
		return nil, false, err
	}
	d, err := s.NewDraft()
	if err != nil {
		return nil, false, err
	}
	sealed := false
	defer func() {
		if !sealed {
			d.Discard()
		}
	}()
	if err := fill(m, d); err != nil {
		return nil, false, err
	}
	b, err := d.seal(raw)
	if err != nil {
		return nil, false, err
	}
	sealed = true
	return b, true, nil
}

// checkImported holds a file written by an import to its manifest entry.
func checkImported(name string, got, want File) error {
	if got != want {
		return &ImportError{Reason: fmt.Sprintf("%s: got %d bytes with sha256 %s, want %d bytes with sha256 %s",
			name, got.Size, got.SHA256, want.Size, want.SHA256)}
	}
	return nil
}

// checkRoom refuses a base whose files, as the manifest sizes them, do not fit in the free
// space of the store's filesystem (less a reserve for running VMs), before any is written. It
// counts holes as written: a stream can fill them.
func checkRoom(m *Manifest, free func() (int64, error)) error {
	avail, err := free()
	if err != nil {
		return &ImportError{"cannot check the store's free space", err}
	}
	if need := m.totalBytes(); need > avail-importReserve {
		return &ImportError{Reason: fmt.Sprintf("base needs %d bytes (disk image %d, memory image %d), but the store's filesystem has %d free, of which %d are kept for running VMs",
			need, m.Files[DiskFile].Size, m.Files[MemoryFile].Size, avail, int64(importReserve))}
	}
	return nil
}

// progressReader counts bytes into a Progress and stops on cancellation.
// ProgressReader reads r, adding what it reads to p, and stops once ctx ends: a copy of many
// gigabytes shows its progress and can be cancelled.
func ProgressReader(ctx context.Context, r io.Reader, p Progress) io.Reader {
	return &progressReader{ctx: ctx, r: r, p: OrNone(p)}
}

type progressReader struct {
	ctx context.Context
	r   io.Reader
	p   Progress
}

func (r *progressReader) Read(b []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.r.Read(b)
	r.p.Add(int64(n))
	return n, err
}
