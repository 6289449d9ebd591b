package base

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/vm"
)

// FuzzParseManifest: no manifest panics the parser, and whatever it accepts keeps every file
// within its limit.
func FuzzParseManifest(f *testing.F) {
	cfg, files := craftedBase(map[string]int64{KernelFile: 6})
	m := Manifest{Format: FormatVersion, Created: time.Unix(0, 0).UTC(), ChunkSize: chunk.Size, VM: cfg, Accel: "tcg", Files: map[string]File{}}
	for name, cf := range files {
		m.Files[name] = cf.file()
	}
	m.Files[InitrdFile] = File{Size: 1 << 20, SHA256: m.Files[KernelFile].SHA256}
	good, err := json.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	m.VM.Platform = &vm.Platform{QEMU: "7.2.22", Accel: "tcg", CPUFeatures: []string{"lm", "sse2"}}
	recorded, err := json.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(recorded)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"format":1,"files":{"disk.img":{"size":-1}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, id, err := parseManifest(b)
		if err != nil {
			return
		}
		if len(id) != 64 {
			t.Fatalf("ID %q", id)
		}
		if p := m.VM.Platform; p != nil && (len(p.CPUFeatures) > 512 || p.QEMU == "") {
			t.Fatalf("platform with %d features, QEMU %q accepted", len(p.CPUFeatures), p.QEMU)
		}
		for name, file := range m.Files {
			if file.Size < 0 || file.Size > fileLimit(m, name) {
				t.Fatalf("%s of %d bytes accepted, limit %d", name, file.Size, fileLimit(m, name))
			}
		}
	})
}

// fuzzFree is the free space FuzzImport's stores claim: room for small bases only, so that no
// input makes the fuzzer write big files.
const fuzzFree = importReserve + 64<<20

// FuzzImport: no archive (a tar stream in zstd) panics an import or leaves a draft behind, and
// whatever it accepts verifies.
func FuzzImport(f *testing.F) {
	cfg, files := craftedBase(map[string]int64{KernelFile: 6})
	f.Add(craftedArchive(f, cfg, files, nil))
	f.Add(craftedArchive(f, cfg, files, []string{DevstateFile}))
	cfg, files = craftedBase(map[string]int64{DevstateFile: 256 << 20})
	f.Add(craftedArchive(f, cfg, files, []string{}))
	f.Add([]byte("not zstd"))
	f.Fuzz(func(t *testing.T, archive []byte) {
		s, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		b, _, err := s.importArchive(context.Background(), bytes.NewReader(archive), nil, func() (int64, error) { return fuzzFree, nil })
		if err != nil {
			if b != nil {
				t.Fatalf("a failed import returned base %s", b.ID)
			}
			if left, _ := os.ReadDir(filepath.Join(s.Home(), "tmp")); len(left) != 0 {
				t.Fatalf("a failed import (%v) left a draft", err)
			}
			return
		}
		if err := b.Verify(context.Background(), nil); err != nil {
			t.Fatalf("an imported base does not verify: %v", err)
		}
	})
}
