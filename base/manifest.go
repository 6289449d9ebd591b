package base

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/vm"
)

// FormatVersion is the manifest format this code writes and reads.
const FormatVersion = 1

// The files of a base directory. Their names are fixed so that a manifest cannot point
// outside its directory.
const (
	DiskFile        = "disk.img"     // raw disk, as the guest left it at the snapshot
	MemoryFile      = "memory.img"   // guest RAM at the snapshot
	DevstateFile    = "devstate"     // QEMU device state (migration stream without RAM)
	KernelFile      = "vmlinuz"      // optional: the kernel the VM booted
	InitrdFile      = "initrd.img"   // optional: its initrd
	DiskIndexFile   = "disk.index"   // SHA-256 of each chunk of the disk, concatenated
	MemoryIndexFile = "memory.index" // SHA-256 of each chunk of the memory image
	ManifestFile    = "manifest.json"
)

var (
	requiredFiles = []string{DiskFile, MemoryFile, DevstateFile, DiskIndexFile, MemoryIndexFile}
	optionalFiles = []string{KernelFile, InitrdFile}
)

// maxManifestBytes bounds a manifest read from outside; the other limits are in limits.go.
const maxManifestBytes = 1 << 20

// File is one file of a base: its size and SHA-256.
type File struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Manifest describes a base. Its SHA-256 is the base ID, so it pins every byte of the base:
// the VM config a resume must repeat and each file's digest.
type Manifest struct {
	Format    int       `json:"format"`
	Name      string    `json:"name,omitempty"`
	Created   time.Time `json:"created"`
	ChunkSize int       `json:"chunk_size"`
	VM        vm.Config `json:"vm"`
	// Accel is where the snapshot was taken, for people; what a host must provide to resume
	// it (CPU features under that accelerator, QEMU version) is in VM.Platform.
	Accel string          `json:"accel"`
	Files map[string]File `json:"files"`
}

// Has reports whether the base has the named file.
func (m *Manifest) Has(name string) bool { _, ok := m.Files[name]; return ok }

func (m *Manifest) validate() error {
	if m.Format != FormatVersion {
		return fmt.Errorf("manifest format %d, this cloudlet reads %d", m.Format, FormatVersion)
	}
	if m.ChunkSize != chunk.Size {
		return fmt.Errorf("manifest chunk size %d, want %d", m.ChunkSize, chunk.Size)
	}
	if err := m.VM.Validate(); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if err := m.validateStrings(); err != nil {
		return err
	}
	if m.VM.MemoryBytes > maxMemoryBytes {
		return fmt.Errorf("manifest: VM memory of %d bytes, limit %d", m.VM.MemoryBytes, int64(maxMemoryBytes))
	}
	known := map[string]bool{}
	for _, name := range append(append([]string(nil), requiredFiles...), optionalFiles...) {
		known[name] = true
	}
	for name, f := range m.Files {
		if !known[name] {
			return fmt.Errorf("manifest names unknown file %q", name)
		}
		if limit := fileLimit(m, name); f.Size < 0 || f.Size > limit {
			return fmt.Errorf("manifest: %s of %d bytes, want 0 to %d", name, f.Size, limit)
		}
		if b, err := hex.DecodeString(f.SHA256); err != nil || len(b) != sha256.Size {
			return fmt.Errorf("manifest: %s: bad sha256 %q", name, f.SHA256)
		}
	}
	for _, name := range requiredFiles {
		if !m.Has(name) {
			return fmt.Errorf("manifest lacks %s", name)
		}
	}
	if m.Has(InitrdFile) && !m.Has(KernelFile) {
		return fmt.Errorf("manifest has an initrd but no kernel")
	}
	for _, pair := range [][2]string{{DiskFile, DiskIndexFile}, {MemoryFile, MemoryIndexFile}} {
		if want := chunk.Count(m.Files[pair[0]].Size) * chunk.DigestSize; m.Files[pair[1]].Size != want {
			return fmt.Errorf("manifest: %s has %d bytes, want %d for %s", pair[1], m.Files[pair[1]].Size, want, pair[0])
		}
	}
	if m.Files[MemoryFile].Size != m.VM.MemoryBytes {
		return fmt.Errorf("manifest: %s has %d bytes, but the VM has %d bytes of RAM", MemoryFile, m.Files[MemoryFile].Size, m.VM.MemoryBytes)
	}
	return nil
}

// validateStrings bounds the manifest's free-form strings: they end up on QEMU's command line
// and in listings.
func (m *Manifest) validateStrings() error {
	for _, f := range []struct {
		what  string
		s     string
		limit int
	}{{"name", m.Name, maxNameLen}, {"accel", m.Accel, maxConfigString}, {"machine type", m.VM.Machine, maxConfigString},
		{"CPU model", m.VM.CPU, maxConfigString}, {"kernel command line", m.VM.Append, maxAppendLen}} {
		if len(f.s) > f.limit {
			return fmt.Errorf("manifest: %s of %d bytes, limit %d", f.what, len(f.s), f.limit)
		}
	}
	return nil
}

// parseManifest decodes and checks a manifest, returning it with its ID.
func parseManifest(b []byte) (*Manifest, string, error) {
	if len(b) > maxManifestBytes {
		return nil, "", fmt.Errorf("manifest is %d bytes, limit %d", len(b), maxManifestBytes)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, "", fmt.Errorf("manifest: %w", err)
	}
	if err := m.validate(); err != nil {
		return nil, "", err
	}
	return &m, manifestID(b), nil
}

func manifestID(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
