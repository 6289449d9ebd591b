package base

import (
	"context"
	"os"
	"testing"

	"github.com/cloudlet/cloudlet/vm"
)

// CommitTiny puts a small synthetic base into s, for tests that need a base but no VM: a 1 MiB
// zero disk, 16 MiB of zero RAM, and placeholder device state and kernel. A session on it
// fails before QEMU would run it.
func CommitTiny(t testing.TB, s *Store, name string) *Base {
	t.Helper()
	return CommitTinyConfig(t, s, name, func(*vm.Config) {})
}

// CommitTinyConfig is CommitTiny with the VM config changed by edit first: a base that names
// another CPU model or machine type, or records a platform.
func CommitTinyConfig(t testing.TB, s *Store, name string, edit func(*vm.Config)) *Base {
	t.Helper()
	return CommitTinyMemory(t, s, name, edit, make([]byte, 16<<20))
}

// CommitTinyMemory is CommitTinyConfig with mem as its memory image: a base whose bytes put
// at the wrong place in a copy do not pass for the right ones. The memory size is len(mem).
func CommitTinyMemory(t testing.TB, s *Store, name string, edit func(*vm.Config), mem []byte) *Base {
	t.Helper()
	d, err := s.NewDraft()
	if err != nil {
		t.Fatal(err)
	}
	cfg := vm.DefaultConfig()
	cfg.MemoryBytes = int64(len(mem))
	edit(&cfg)
	files := map[string][]byte{DiskFile: make([]byte, 1<<20), MemoryFile: mem,
		DevstateFile: []byte("devstate"), KernelFile: []byte("kernel")}
	for name, b := range files {
		if err := os.WriteFile(d.Path(name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := d.Commit(context.Background(), Manifest{Name: name, VM: cfg, Accel: "tcg"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
