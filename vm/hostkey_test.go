package vm

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHostKeyCPU: the key follows what of the host CPU can change QEMU's answer (flags,
// microcode, model) and ignores what changes all the time (frequency, bogomips).
func TestHostKeyCPU(t *testing.T) {
	const cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nmicrocode\t: 0x1\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu sse2 avx\nbogomips\t: 4000.00\n\n" +
		"processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\nmicrocode\t: 0x1\ncpu MHz\t\t: 2100.000\nflags\t\t: fpu sse2 avx\nbogomips\t: 4000.00\n"
	dir := t.TempDir()
	hash := func(s string) string {
		p := filepath.Join(dir, "cpuinfo")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return cpuIdentity(p)
	}
	want := hash(cpuinfo)
	tests := []struct {
		name, old, new string
		same           bool
	}{
		{"frequency", "2100.000", "3400.000", true},
		{"bogomips", "4000.00", "4100.00", true},
		{"flag dropped", "fpu sse2 avx\nbogomips\t: 4000.00\n\nprocessor", "fpu sse2\nbogomips\t: 4000.00\n\nprocessor", false},
		{"microcode", "microcode\t: 0x1\ncpu MHz\t\t: 2000", "microcode\t: 0x2\ncpu MHz\t\t: 2000", false},
		{"model", "model name\t: Xeon\nmicrocode\t: 0x1\ncpu MHz\t\t: 2000", "model name\t: EPYC\nmicrocode\t: 0x1\ncpu MHz\t\t: 2000", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			changed := strings.Replace(cpuinfo, tc.old, tc.new, 1)
			if changed == cpuinfo {
				t.Fatalf("%q not in the fixture", tc.old)
			}
			if got := hash(changed); (got == want) != tc.same {
				t.Fatalf("key unchanged: %v, want %v", got == want, tc.same)
			}
		})
	}
	if got := cpuIdentity(filepath.Join(dir, "none")); got == want || !strings.HasPrefix(got, "unreadable") {
		t.Fatalf("missing cpuinfo: got %q, want an unreadable marker", got)
	}
}

// TestHostKeyKVM: a changed KVM module parameter (nested virtualisation) changes the key.
func TestHostKeyKVM(t *testing.T) {
	sys := t.TempDir()
	params := filepath.Join(sys, "kvm_intel", "parameters")
	if err := os.MkdirAll(params, 0o700); err != nil {
		t.Fatal(err)
	}
	set := func(v string) string {
		if err := os.WriteFile(filepath.Join(params, "nested"), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return kvmParameters(sys)
	}
	if off, on := set("N"), set("Y"); off == on {
		t.Fatal("nested=N and nested=Y give the same key")
	}
	if a, b := set("Y"), set("Y"); a != b {
		t.Fatal("the same parameters give two keys")
	}
}

// FuzzReadHostCache: whatever a cache file holds, reading it never panics, and an answer is
// returned only for the key it was asked under.
func FuzzReadHostCache(f *testing.F) {
	key := hostKey{QEMU: "/usr/bin/qemu-system-x86_64", Size: 1, Accel: AccelTCG}
	good, err := json.Marshal(newHostRecord(key, &HostInfo{Accel: AccelTCG, QEMU: "7.2.22",
		machine:     map[string]string{"q35": "pc-q35-7.2", "pc-q35-7.2": "pc-q35-7.2"},
		cpus:        map[string]cpuDefinition{"max": {Name: "max"}},
		maxFeatures: map[string]bool{"lm": true}, devices: map[string]bool{"virtio-blk-pci": true}}))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"version":1,"key":{},"machines":{"a":""},"cpus":[null],"devices":[""]}`))
	f.Add([]byte(`{"version":1`))
	path := filepath.Join(f.TempDir(), "cache.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		info, err := readHostCache(path, key)
		if err != nil {
			return
		}
		if info.Accel != key.Accel || info.QEMU == "" {
			t.Fatalf("accepted an answer %+v for key %+v", info, key)
		}
		info.Check(DefaultConfig())
	})
}
