package base

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/vm"
)

// TestManifestLimits: a manifest read from outside is refused when a size or string is beyond
// its limit, with the field and the sizes named.
func TestManifestLimits(t *testing.T) {
	valid := func() *Manifest {
		cfg, files := craftedBase(nil)
		m := &Manifest{Format: FormatVersion, Created: time.Unix(0, 0).UTC(), ChunkSize: chunk.Size, VM: cfg, Accel: "tcg", Files: map[string]File{}}
		for name, f := range files {
			m.Files[name] = File{Size: f.size, SHA256: strings.Repeat("ab", 32)}
		}
		return m
	}
	tests := []struct {
		name   string
		modify func(*Manifest)
		want   string
	}{
		{"valid", func(*Manifest) {}, ""},
		{"long name", func(m *Manifest) { m.Name = strings.Repeat("n", maxNameLen+1) }, "name of 257 bytes, limit 256"},
		{"long machine type", func(m *Manifest) { m.VM.Machine = strings.Repeat("q", 65) }, "machine type of 65 bytes"},
		{"long kernel command line", func(m *Manifest) { m.VM.Append = strings.Repeat("a", maxAppendLen+1) }, "kernel command line of 4097 bytes"},
		{"RAM beyond the limit", func(m *Manifest) {
			m.VM.MemoryBytes = maxMemoryBytes + 1<<20
			m.Files[MemoryFile] = File{Size: m.VM.MemoryBytes, SHA256: m.Files[MemoryFile].SHA256}
		}, "VM memory of 1099512676352 bytes"},
		{"disk beyond the limit", func(m *Manifest) { m.Files[DiskFile] = File{Size: maxDiskBytes + 1, SHA256: m.Files[DiskFile].SHA256} }, "disk.img of 1099511627777 bytes, want 0 to 1099511627776"},
		{"negative size", func(m *Manifest) { m.Files[DevstateFile] = File{Size: -1, SHA256: m.Files[DevstateFile].SHA256} }, "devstate of -1 bytes"},
		{"valid platform", func(m *Manifest) {
			m.VM.Platform = &vm.Platform{QEMU: "7.2.22", Accel: "kvm", CPUFeatures: []string{"aes", "kvmclock", "sse4.2"}}
		}, ""},
		{"platform feature that is no name", func(m *Manifest) {
			m.VM.Platform = &vm.Platform{QEMU: "7.2.22", Accel: "tcg", CPUFeatures: []string{"lm", "sse2,+evil"}}
		}, "CPU feature"},
		{"platform without a QEMU version", func(m *Manifest) { m.VM.Platform = &vm.Platform{Accel: "tcg"} }, "QEMU version"},
	}
	for _, tc := range tests {
		m := valid()
		tc.modify(m)
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = parseManifest(b)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
