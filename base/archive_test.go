package base

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/vm"
)

// craftedFile is one file of a crafted archive: size bytes of one repeated value, which zstd
// compresses to almost nothing.
type craftedFile struct {
	size int64
	fill byte
}

func (f craftedFile) reader() io.Reader {
	return io.LimitReader(repeatReader(f.fill), f.size)
}

func (f craftedFile) file() File {
	h := sha256.New()
	io.Copy(h, f.reader())
	return File{Size: f.size, SHA256: hex.EncodeToString(h.Sum(nil))}
}

type repeatReader byte

func (r repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

// craftedBase is the files of a small valid base (16 MiB of RAM) with some sizes replaced.
func craftedBase(sizes map[string]int64) (vm.Config, map[string]craftedFile) {
	cfg := vm.DefaultConfig()
	cfg.MemoryBytes = 16 << 20
	files := map[string]craftedFile{}
	for name, size := range map[string]int64{DiskFile: 1 << 20, MemoryFile: cfg.MemoryBytes, DevstateFile: 5000} {
		if s, ok := sizes[name]; ok {
			size = s
		}
		files[name] = craftedFile{size: size, fill: byte(len(name))}
	}
	for name, size := range sizes {
		if _, ok := files[name]; !ok {
			files[name] = craftedFile{size: size, fill: byte(len(name))}
		}
	}
	for img, idx := range map[string]string{DiskFile: DiskIndexFile, MemoryFile: MemoryIndexFile} {
		files[idx] = craftedFile{size: chunk.Count(files[img].size) * chunk.DigestSize, fill: 7}
	}
	return cfg, files
}

// craftedArchive is an export of a base made of crafted files, as an attacker would make it:
// a manifest that describes them truly, then the files named in write (all if nil).
func craftedArchive(t testing.TB, cfg vm.Config, files map[string]craftedFile, write []string) []byte {
	t.Helper()
	m := Manifest{Format: FormatVersion, Name: "crafted", Created: time.Unix(0, 0).UTC(), ChunkSize: chunk.Size, VM: cfg,
		Accel: "tcg", Files: map[string]File{}}
	for name, f := range files {
		// A file never sent gets a made-up digest: the import must refuse it (or stop at its
		// absence) without reading it, and hashing a claimed TiB would take hours.
		m.Files[name] = File{Size: f.size, SHA256: strings.Repeat("00", sha256.Size)}
	}
	if write == nil {
		write = sortedNames(&m)
	}
	for _, name := range write {
		m.Files[name] = files[name].file()
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(zw)
	put := func(name string, size int64, r io.Reader) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Size: size, Mode: 0o600, Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, r); err != nil {
			t.Fatal(err)
		}
	}
	put(ManifestFile, int64(len(raw)), bytes.NewReader(raw))
	for _, name := range write {
		put(name, files[name].size, files[name].reader())
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// countingProgress counts the bytes an import wrote.
type countingProgress struct{ n int64 }

func (p *countingProgress) Begin(string, int64) {}
func (p *countingProgress) Add(n int64)         { p.n += n }
func (p *countingProgress) End()                {}

// TestImportBoundsSizes: a small archive that inflates to big files is refused before a byte
// of them is written, with an ImportError naming the file and the sizes.
func TestImportBoundsSizes(t *testing.T) {
	ctx := context.Background()
	home := t.TempDir()
	free, err := freeBytes(home)
	if err != nil {
		t.Fatal(err)
	}
	const hugeDisk = maxDiskBytes
	if need := hugeDisk + chunk.Count(hugeDisk)*chunk.DigestSize; free >= need {
		t.Fatalf("the test's filesystem has %d bytes free; the free-space case needs less than %d", free, need)
	}
	tests := []struct {
		name    string
		sizes   map[string]int64
		write   []string
		wantErr string
	}{
		{"device state of 65 MiB", map[string]int64{DevstateFile: 65 << 20}, nil, "devstate of 68157440 bytes, want 0 to 67108864"},
		{"kernel larger than the VM's RAM", map[string]int64{KernelFile: 32 << 20}, nil, "vmlinuz of 33554432 bytes, want 0 to 16777216"},
		{"initrd larger than the VM's RAM", map[string]int64{KernelFile: 1 << 20, InitrdFile: 17 << 20}, nil, "initrd.img of 17825792 bytes, want 0 to 16777216"},
		{"disk larger than the free space", map[string]int64{DiskFile: hugeDisk}, []string{}, "the store's filesystem has"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, files := craftedBase(tc.sizes)
			archive := craftedArchive(t, cfg, files, tc.write)
			s, err := Open(filepath.Join(home, strings.ReplaceAll(tc.name, " ", "-")))
			if err != nil {
				t.Fatal(err)
			}
			p := &countingProgress{}
			_, _, err = s.Import(ctx, bytes.NewReader(archive), p)
			var ie *ImportError
			if !errors.As(err, &ie) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("import of a %d-byte archive: %v, want an ImportError mentioning %q", len(archive), err, tc.wantErr)
			}
			if p.n != 0 {
				t.Errorf("the import wrote %d bytes before it refused the archive", p.n)
			}
			if left, _ := os.ReadDir(filepath.Join(s.Home(), "tmp")); len(left) != 0 {
				t.Errorf("a refused import left a draft")
			}
		})
	}
}

// TestImportNeedsRoom: an import that does not fit in the free space (less the reserve) is
// refused; one that fits is taken.
func TestImportNeedsRoom(t *testing.T) {
	ctx := context.Background()
	cfg, files := craftedBase(nil)
	archive := craftedArchive(t, cfg, files, nil)
	var need int64
	for _, f := range files {
		need += f.size
	}
	tests := []struct {
		free    int64
		wantErr string
	}{
		{importReserve + need - 1, "the store's filesystem has"},
		{need, "the store's filesystem has"},
		{importReserve + need, ""},
	}
	for _, tc := range tests {
		s, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = s.importArchive(ctx, bytes.NewReader(archive), nil, func() (int64, error) { return tc.free, nil })
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("import with %d bytes free for %d: %v, want %q", tc.free, need, err, tc.wantErr)
		}
	}
}

// TestImportRefusesOtherEntryTypes: an entry that is not a regular file is not imported.
func TestImportRefusesOtherEntryTypes(t *testing.T) {
	cfg, files := craftedBase(nil)
	archive := craftedArchive(t, cfg, files, []string{})
	// Append a symlink entry named like a base file to the manifest-only archive.
	zr, _ := zstd.NewReader(bytes.NewReader(archive))
	defer zr.Close()
	plain, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	tr := tar.NewReader(bytes.NewReader(plain))
	h, _ := tr.Next()
	tw.WriteHeader(h)
	io.Copy(tw, tr)
	tw.WriteHeader(&tar.Header{Name: DevstateFile, Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"})
	tw.Close()
	var z bytes.Buffer
	zw, _ := zstd.NewWriter(&z)
	zw.Write(tarBuf.Bytes())
	zw.Close()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Import(context.Background(), &z, nil); err == nil || !strings.Contains(err.Error(), "unexpected entry") {
		t.Fatalf("import with a symlink entry: %v, want an unexpected entry", err)
	}
}
