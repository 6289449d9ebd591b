package vm_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/vm"
)

// probes counts the probes a fake QEMU (fakeQEMU) has run.
func probes(t *testing.T, log string) int {
	t.Helper()
	calls, err := os.ReadFile(log)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(calls), "-machine none")
}

// infoTCG asks h under TCG with a deadline.
func infoTCG(t *testing.T, h *vm.Host) *vm.HostInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	info, err := h.Info(ctx, vm.AccelTCG)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// cacheFile is the one file in a cache directory.
func cacheFile(t *testing.T, dir string) string {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(matches) != 1 {
		t.Fatalf("cache files %q (%v): want one", matches, err)
	}
	return matches[0]
}

// TestHostCacheKeepsAnswer: a second Host (another process) with the same cache directory
// gets the first one's answer, equal to the probed one, without starting QEMU; a Host without
// the cache probes.
func TestHostCacheKeepsAnswer(t *testing.T) {
	testguest.Require(t, "qemu-system-x86_64")
	bin, log := fakeQEMU(t)
	dir := filepath.Join(t.TempDir(), "host")
	probed := infoTCG(t, vm.NewCachedHost(bin, dir))
	if n := probes(t, log); n != 1 {
		t.Fatalf("first Host probed %d times, want 1", n)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("cache directory: %v, %v: want mode 0700", st, err)
	}
	if st, err := os.Stat(cacheFile(t, dir)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("cache file: %v, %v: want mode 0600", st, err)
	}
	for i := 0; i < 2; i++ {
		kept := infoTCG(t, vm.NewCachedHost(bin, dir))
		if !reflect.DeepEqual(kept, probed) {
			t.Fatalf("kept answer differs from the probed one:\n%+v\n%+v", kept, probed)
		}
	}
	if n := probes(t, log); n != 1 {
		t.Fatalf("QEMU probed %d times for three Hosts sharing a cache: want 1", n)
	}
	infoTCG(t, vm.NewHost(bin))
	if n := probes(t, log); n != 2 {
		t.Fatalf("QEMU probed %d times after a Host without a cache: want 2", n)
	}
}

// TestHostCacheReprobes: whatever makes the kept answer unusable (a changed binary, a file
// that is corrupt, cut short, too large, of another version or for another binary) costs one
// probe, and the file is replaced: the next Host probes nothing.
func TestHostCacheReprobes(t *testing.T) {
	testguest.Require(t, "qemu-system-x86_64")
	bin, log := fakeQEMU(t)
	dir := t.TempDir()
	infoTCG(t, vm.NewCachedHost(bin, dir))
	file := cacheFile(t, dir)
	good, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	write := func(data []byte) func(t *testing.T) {
		return func(t *testing.T) {
			if err := os.WriteFile(file, data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name  string
		spoil func(t *testing.T)
	}{
		{"binary touched", func(t *testing.T) {
			later := time.Now().Add(time.Hour)
			if err := os.Chtimes(bin, later, later); err != nil {
				t.Fatal(err)
			}
		}},
		{"binary replaced", func(t *testing.T) {
			// Same contents, another inode, as a package upgrade's rename leaves it.
			data, err := os.ReadFile(bin)
			if err != nil {
				t.Fatal(err)
			}
			tmp := bin + ".new"
			if err := os.WriteFile(tmp, data, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, bin); err != nil {
				t.Fatal(err)
			}
		}},
		{"not JSON", write([]byte("{\"version\": 1, \"key\": {"))},
		{"empty", write(nil)},
		{"cut short", write(good[:len(good)/2])},
		// Valid JSON padded past the bound: refused before it is read.
		{"too large", write(append(append([]byte(nil), good...), bytes.Repeat([]byte(" "), 4<<20)...))},
		{"other version", write(bytes.Replace(good, []byte(`"version":1`), []byte(`"version":99`), 1))},
		{"other binary", write(bytes.Replace(good, []byte(`"size":`), []byte(`"size":1`), 1))},
		{"no answer", write([]byte(`{"version":1}`))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := probes(t, log)
			tc.spoil(t)
			infoTCG(t, vm.NewCachedHost(bin, dir))
			if n := probes(t, log) - before; n != 1 {
				t.Fatalf("spoilt cache: %d probes, want 1", n)
			}
			if got := cacheFile(t, dir); got != file {
				t.Fatalf("answer kept in %s, want %s", got, file)
			}
			infoTCG(t, vm.NewCachedHost(bin, dir))
			if n := probes(t, log) - before; n != 1 {
				t.Fatalf("after the re-probe: %d probes in all, want 1 (the file was not replaced)", n)
			}
			var err error
			if good, err = os.ReadFile(file); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestHostCacheConcurrent: Hosts of several processes sharing a cache directory, asking at the
// same time, all get the same answer; a reader never sees a file half written.
func TestHostCacheConcurrent(t *testing.T) {
	testguest.Require(t, "qemu-system-x86_64")
	bin, _ := fakeQEMU(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const hosts = 4
	infos := make([]*vm.HostInfo, hosts)
	errs := make([]error, hosts)
	var wg sync.WaitGroup
	for i := range infos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			infos[i], errs[i] = vm.NewCachedHost(bin, dir).Info(ctx, vm.AccelTCG)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("host %d: %v", i, err)
		}
		if !reflect.DeepEqual(infos[i], infos[0]) {
			t.Fatalf("host %d got another answer than host 0", i)
		}
	}
	if kept := infoTCG(t, vm.NewCachedHost(bin, dir)); !reflect.DeepEqual(kept, infos[0]) {
		t.Fatal("kept answer differs from the probed ones")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("cache directory holds %d entries, want the answer alone (no temporary files)", len(entries))
	}
}

// TestHostCacheRealQEMU: the qemu-system-x86_64 on PATH, kept and read back, passes and refuses
// what it did when probed.
func TestHostCacheRealQEMU(t *testing.T) {
	testguest.Require(t, "qemu-system-x86_64")
	dir := t.TempDir()
	probed := infoTCG(t, vm.NewCachedHost("", dir))
	start := time.Now()
	kept := infoTCG(t, vm.NewCachedHost("", dir))
	took := time.Since(start)
	if !reflect.DeepEqual(kept, probed) {
		t.Fatal("kept answer differs from the probed one")
	}
	t.Logf("kept answer read in %v", took)
	cfg := vm.DefaultConfig()
	cfg.CPU = "Haswell"
	if _, err := kept.Check(cfg); err == nil || !strings.Contains(err.Error(), "missing features") {
		t.Fatalf("kept answer: Haswell under TCG: got %v, want missing features", err)
	}
}

// TestHostCacheFollowsLink: a QEMU named through a symlink is keyed by the file the link
// points to: pointing it at another binary asks that one.
func TestHostCacheFollowsLink(t *testing.T) {
	testguest.Require(t, "qemu-system-x86_64")
	binA, logA := fakeQEMU(t)
	binB, logB := fakeQEMU(t)
	link := filepath.Join(t.TempDir(), "qemu")
	dir := t.TempDir()
	point := func(target string) {
		os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		target     string
		probesA    int // in all, after this step
		probesB    int
		cacheFiles int
	}{
		{binA, 1, 0, 1},
		{binA, 1, 0, 1}, // kept
		{binB, 1, 1, 2}, // another binary, another file
		{binA, 1, 1, 2}, // back: the first answer still holds
	}
	for i, s := range steps {
		point(s.target)
		infoTCG(t, vm.NewCachedHost(link, dir))
		if a, b := probes(t, logA), probes(t, logB); a != s.probesA || b != s.probesB {
			t.Fatalf("step %d: probes %d and %d, want %d and %d", i, a, b, s.probesA, s.probesB)
		}
		if m, _ := filepath.Glob(filepath.Join(dir, "*.json")); len(m) != s.cacheFiles {
			t.Fatalf("step %d: %d cache files, want %d", i, len(m), s.cacheFiles)
		}
	}
}
