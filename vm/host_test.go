package vm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/vm"
)

// probeTCG asks this host's QEMU what it can do under TCG.
func probeTCG(t *testing.T, h *vm.Host) *vm.HostInfo {
	t.Helper()
	testguest.Require(t, "qemu-system-x86_64")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	info, err := h.Info(ctx, vm.AccelTCG)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// recorded is a platform this host (QEMU under TCG) provides: a few of max's features.
func recorded(info *vm.HostInfo) *vm.Platform {
	return &vm.Platform{QEMU: info.QEMU, Accel: "tcg", CPUFeatures: []string{"lm", "sse2", "sse4.2"}}
}

// TestHostCheck runs each kind of mismatch against what this host's QEMU reports under TCG:
// each is refused with its reason named, and what cannot be known is a warning.
func TestHostCheck(t *testing.T) {
	info := probeTCG(t, vm.NewHost(""))
	versioned, ok := info.Machine("q35")
	if !ok || !strings.HasPrefix(versioned, "pc-q35-") {
		t.Fatalf("q35 resolves to %q, %v: want pc-q35-VERSION", versioned, ok)
	}
	tests := []struct {
		name    string
		edit    func(*vm.Config)
		refused []string // substrings of the refusal; none means accepted
		warned  []string // substrings of the warnings; none means there are none
	}{
		{"old base: no record, alias machine", func(c *vm.Config) {}, nil,
			[]string{"does not record the QEMU version and CPU features", "machine type q35 is an alias (here of " + versioned + ")"}},
		{"recorded, versioned machine", func(c *vm.Config) { c.Machine, c.Platform = versioned, recorded(info) }, nil, nil},
		{"unknown machine type", func(c *vm.Config) { c.Machine, c.Platform = "pc-q35-99.0", recorded(info) },
			[]string{"needs machine type pc-q35-99.0, which this host's QEMU " + info.QEMU + " does not know"}, nil},
		{"unknown CPU model", func(c *vm.Config) { c.Machine, c.CPU, c.Platform = versioned, "Frobnitz-v9", recorded(info) },
			[]string{"needs CPU model Frobnitz-v9, which this host's QEMU " + info.QEMU + " does not have"}, nil},
		// TCG lacks TSX and a few other features that the Haswell model asks for.
		{"old base, model with features TCG lacks", func(c *vm.Config) { c.CPU = "Haswell" },
			[]string{"needs CPU model Haswell, which this host's QEMU " + info.QEMU + " under TCG cannot provide: missing features ", "hle", "rtm"},
			[]string{"does not record", "is an alias"}},
		{"recorded feature TCG lacks", func(c *vm.Config) {
			c.Machine, c.Platform = versioned, recorded(info)
			c.Platform.CPUFeatures = []string{"avx512f", "lm", "sse2"}
		}, []string{"needs CPU model max, which this host's QEMU " + info.QEMU + " under TCG cannot provide: missing features avx512f"}, nil},
		{"made under KVM", func(c *vm.Config) {
			c.Machine, c.CPU, c.Platform = versioned, "Westmere", recorded(info)
			c.Platform.Accel, c.Platform.CPUFeatures = "kvm", []string{"aes", "kvmclock", "lm"}
		}, []string{"missing features kvmclock (it was made under KVM)"}, nil},
		{"newer QEMU", func(c *vm.Config) {
			c.Machine, c.Platform = versioned, recorded(info)
			c.Platform.QEMU = "99.1.0"
		}, []string{"needs QEMU 99.1 or later (it was made with 99.1.0), and this host has QEMU " + info.QEMU}, nil},
		{"unknown device", func(c *vm.Config) {
			c.Machine, c.Platform = versioned, recorded(info)
			c.Devices = append(c.Devices, "frobnitz-pci")
		}, []string{"needs device frobnitz-pci"}, nil},
		{"two reasons", func(c *vm.Config) { c.Machine, c.CPU, c.Platform = "pc-q35-99.0", "Frobnitz-v9", recorded(info) },
			[]string{"machine type pc-q35-99.0", "; needs CPU model Frobnitz-v9"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := vm.DefaultConfig()
			tc.edit(&cfg)
			warnings, err := info.Check(cfg)
			for _, want := range tc.refused {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("got error %v, want one with %q", err, want)
				}
			}
			var mm *vm.MismatchError
			if tc.refused != nil && !errors.As(err, &mm) {
				t.Errorf("got %T, want a *vm.MismatchError", err)
			}
			if tc.refused == nil && err != nil {
				t.Errorf("refused: %v", err)
			}
			all := strings.Join(warnings, "\n")
			for _, want := range tc.warned {
				if !strings.Contains(all, want) {
					t.Errorf("warnings %q lack %q", all, want)
				}
			}
			if tc.warned == nil && len(warnings) > 0 {
				t.Errorf("unexpected warnings %q", all)
			}
		})
	}
}

// fakeQEMU is a QEMU that logs each command line to a file, then runs the real one: a test
// can tell a probe (-machine none) from a VM (-incoming).
func fakeQEMU(t *testing.T) (bin, log string) {
	t.Helper()
	dir := t.TempDir()
	bin, log = filepath.Join(dir, "qemu-system-x86_64"), filepath.Join(dir, "calls.log")
	script := "#!/bin/sh\necho \"$*\" >> " + log + "\nexec qemu-system-x86_64 \"$@\"\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, log
}

// TestResumeRefusedBeforeQEMU: a snapshot whose CPU model this host cannot provide is refused
// with the reason, and QEMU is never started for the VM (only asked, once, what it has).
func TestResumeRefusedBeforeQEMU(t *testing.T) {
	testguest.Require(t, "qemu-system-x86_64")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	for _, name := range []string{"disk.img", "mem.img", "devstate"} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bin, log := fakeQEMU(t)
	host := vm.NewHost(bin)
	cfg := vm.DefaultConfig()
	cfg.MemoryBytes, cfg.CPU = 16<<20, "Haswell"
	opts := vm.Options{Config: cfg, QEMU: bin, Host: host, Accel: vm.AccelTCG,
		Disk: vm.Disk{Path: filepath.Join(dir, "disk.img")}, Memory: vm.Memory{Path: filepath.Join(dir, "mem.img")}}
	// Both drivers, the second time from the kept answer; libvirt is never asked (no daemon
	// listens at its URI).
	for _, d := range []vm.Driver{vm.DriverQEMU, vm.DriverLibvirt} {
		opts.Driver = d
		opts.Libvirt.URI = "qemu+unix:///system?socket=" + filepath.Join(dir, "none.sock")
		v, err := vm.Resume(ctx, opts, filepath.Join(dir, "devstate"))
		if err == nil {
			v.Kill()
			t.Fatalf("%s: resume of a Haswell snapshot under TCG succeeded", d)
		}
		var mm *vm.MismatchError
		if !errors.As(err, &mm) || !strings.Contains(err.Error(), "needs CPU model Haswell") || !strings.Contains(err.Error(), "missing features") {
			t.Fatalf("%s: got %v, want a refusal naming CPU model Haswell and its missing features", d, err)
		}
	}
	calls, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(calls)), "\n")
	// One probe for both resumes: the host's answer is kept.
	if len(lines) != 1 || !strings.Contains(lines[0], "-machine none") || strings.Contains(lines[0], "-incoming") {
		t.Fatalf("QEMU was run as %q: want one probe (-machine none) and no VM", lines)
	}
}

// TestPlatformValidate: a record read from a manifest or overlay is bounded and well formed.
func TestPlatformValidate(t *testing.T) {
	good := func() *vm.Platform {
		return &vm.Platform{QEMU: "7.2.22", Accel: "tcg", CPUFeatures: []string{"lm", "sse2"}}
	}
	many := make([]string, 513)
	for i := range many {
		many[i] = fmt.Sprintf("f%04d", i)
	}
	tests := []struct {
		name string
		edit func(*vm.Platform)
		want string
	}{
		{"good", func(p *vm.Platform) {}, ""},
		{"no version", func(p *vm.Platform) { p.QEMU = "" }, "QEMU version"},
		{"bad version", func(p *vm.Platform) { p.QEMU = "7.x" }, "QEMU version"},
		{"bad accel", func(p *vm.Platform) { p.Accel = "hvf" }, "accelerator"},
		{"unsorted", func(p *vm.Platform) { p.CPUFeatures = []string{"sse2", "lm"} }, "not sorted"},
		{"duplicate", func(p *vm.Platform) { p.CPUFeatures = []string{"lm", "lm"} }, "not sorted"},
		{"bad name", func(p *vm.Platform) { p.CPUFeatures = []string{"lm,+evil"} }, "CPU feature"},
		{"long name", func(p *vm.Platform) { p.CPUFeatures = []string{strings.Repeat("a", 65)} }, "CPU feature"},
		{"too many", func(p *vm.Platform) { p.CPUFeatures = many }, "513 CPU features, limit 512"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := vm.DefaultConfig()
			cfg.Platform = good()
			tc.edit(cfg.Platform)
			err := cfg.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// TestHostProbesOnce: callers at the same time share one probe of QEMU, per accelerator.
func TestHostProbesOnce(t *testing.T) {
	testguest.Require(t, "qemu-system-x86_64")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bin, log := fakeQEMU(t)
	h := vm.NewHost(bin)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := h.Info(ctx, vm.AccelTCG)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	calls, _ := os.ReadFile(log)
	if n := strings.Count(string(calls), "\n"); n != 1 {
		t.Fatalf("QEMU ran %d times for 8 callers: want once\n%s", n, calls)
	}
}
