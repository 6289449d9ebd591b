package base

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/cloudlet/cloudlet/chunk"
)

// Progress reports a long step (hashing, copying); the CLI draws it as a bar on a terminal.
type Progress interface {
	Begin(label string, total int64)
	Add(n int64)
	End()
}

type noProgress struct{}

func (noProgress) Begin(string, int64) {}
func (noProgress) Add(int64)           {}
func (noProgress) End()                {}

// OrNone is p, or a Progress that shows nothing when p is nil.
func OrNone(p Progress) Progress {
	if p == nil {
		return noProgress{}
	}
	return p
}

// ioBuffer is the read size for hashing and copying: large enough to stream, a multiple of
// the chunk size so that chunks never straddle two reads.
const ioBuffer = 1 << 20

// hashFile returns the size and SHA-256 of a file and, if index is not nil, writes the SHA-256
// of each chunk to it.
func hashFile(ctx context.Context, path string, index io.Writer, p Progress) (File, error) {
	f, err := os.Open(path)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return File{}, err
	}
	p = OrNone(p)
	p.Begin("hash "+st.Name(), st.Size())
	defer p.End()
	h := sha256.New()
	buf := make([]byte, ioBuffer)
	var size int64
	for {
		if err := ctx.Err(); err != nil {
			return File{}, fmt.Errorf("hash %s: %w", path, err)
		}
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			h.Write(buf[:n])
			size += int64(n)
			p.Add(int64(n))
			if index != nil {
				for off := 0; off < n; off += chunk.Size {
					d := chunk.Sum(buf[off:min(off+chunk.Size, n)])
					if _, werr := index.Write(d[:]); werr != nil {
						return File{}, fmt.Errorf("hash %s: index: %w", path, werr)
					}
				}
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return File{}, fmt.Errorf("hash %s: %w", path, err)
		}
	}
	return File{Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// copySparse copies src into the new file dst, leaving all-zero chunks as holes (disk and
// memory images are mostly zeros), and returns the bytes copied and their SHA-256.
func copySparse(ctx context.Context, dst string, src io.Reader, p Progress) (File, error) {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return File{}, err
	}
	defer out.Close()
	h := sha256.New()
	size, err := WriteSparse(ctx, out, 0, src, h, p)
	if err != nil {
		return File{}, fmt.Errorf("write %s: %w", dst, err)
	}
	if err := out.Truncate(size); err != nil {
		return File{}, fmt.Errorf("write %s: %w", dst, err)
	}
	return File{Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}, out.Close()
}

var zeroChunk = make([]byte, chunk.Size)

// WriteSparse copies src into out from byte off on, and into h, leaving each all-zero run of
// chunk.Size as a hole, and returns how many bytes it copied. The caller sets out's size: a
// file ends at its last non-zero chunk until then, and its holes read as the zeros they stand
// for, so a download cut short can resume at its size.
func WriteSparse(ctx context.Context, out *os.File, off int64, src io.Reader, h hash.Hash, p Progress) (int64, error) {
	p = OrNone(p)
	buf := make([]byte, ioBuffer)
	var size int64
	for {
		if err := ctx.Err(); err != nil {
			return size, err
		}
		n, err := io.ReadFull(src, buf)
		h.Write(buf[:n])
		for i := 0; i < n; i += chunk.Size {
			c := buf[i:min(i+chunk.Size, n)]
			if bytes.Equal(c, zeroChunk[:len(c)]) {
				continue
			}
			if _, werr := out.WriteAt(c, off+size+int64(i)); werr != nil {
				return size, werr
			}
		}
		size += int64(n)
		p.Add(int64(n))
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return size, nil
		}
		if err != nil {
			return size, err
		}
	}
}

// CopyFileSparse copies the file at src to dst (which must not exist) without writing its
// zero chunks.
func CopyFileSparse(ctx context.Context, dst, src string, p Progress) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	p = OrNone(p)
	p.Begin("copy "+st.Name(), st.Size())
	defer p.End()
	_, err = copySparse(ctx, dst, in, p)
	return err
}

// Verify re-reads every file of the base and checks it against the manifest.
func (b *Base) Verify(ctx context.Context, p Progress) error {
	return b.VerifyFiles(ctx, p, sortedNames(b.Manifest)...)
}

// VerifyFiles checks the named files against the manifest. A resume checks the small ones
// (device state, kernel, initrd) every time: it costs milliseconds and keeps a damaged file
// from ever reaching QEMU.
func (b *Base) VerifyFiles(ctx context.Context, p Progress, names ...string) error {
	for _, name := range names {
		want, ok := b.Manifest.Files[name]
		if !ok {
			continue
		}
		got, err := hashFile(ctx, b.Path(name), nil, p)
		if err != nil {
			return fmt.Errorf("verify base %s: %w", b.ID, err)
		}
		if got != want {
			return fmt.Errorf("verify base %s: %s: got %d bytes with sha256 %s, want %d bytes with sha256 %s",
				b.ID, name, got.Size, got.SHA256, want.Size, want.SHA256)
		}
	}
	return nil
}

// sortedNames is the manifest's files in a fixed order: small ones first.
func sortedNames(m *Manifest) []string {
	var names []string
	for _, n := range append(append([]string{DevstateFile}, optionalFiles...), DiskIndexFile, MemoryIndexFile, DiskFile, MemoryFile) {
		if m.Has(n) {
			names = append(names, n)
		}
	}
	return names
}
