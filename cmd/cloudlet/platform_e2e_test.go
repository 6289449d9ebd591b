package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/vm"
)

// tcgHost is what this host's QEMU reports under TCG, the accelerator these tests resume with.
func tcgHost(t *testing.T) *vm.HostInfo {
	t.Helper()
	testguest.Require(t, "qemu-system-x86_64")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	info, err := vm.NewHost("").Info(ctx, vm.AccelTCG)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// travellingBases puts into home one tiny base per way a base meets a host: made by an older
// cloudlet (no record), recorded and resumable here, and three this host cannot resume.
func travellingBases(t *testing.T, home string, info *vm.HostInfo) map[string]*base.Base {
	t.Helper()
	s := mustStore(t, home)
	machine, _ := info.Machine("q35")
	record := func(cpu string, features ...string) func(*vm.Config) {
		return func(c *vm.Config) {
			c.Machine, c.CPU = machine, cpu
			c.Platform = &vm.Platform{QEMU: info.QEMU, Accel: "tcg", CPUFeatures: features}
		}
	}
	return map[string]*base.Base{
		"old":     base.CommitTiny(t, s, "old"),
		"here":    base.CommitTinyConfig(t, s, "here", record("max", "lm", "sse2", "sse4.2")),
		"model":   base.CommitTinyConfig(t, s, "model", record("Frobnitz-v9", "lm")),
		"haswell": base.CommitTinyConfig(t, s, "haswell", func(c *vm.Config) { c.CPU = "Haswell" }),
		"machine": base.CommitTinyConfig(t, s, "machine", func(c *vm.Config) { record("max", "lm")(c); c.Machine = "pc-q35-99.0" }),
	}
}

// TestBaseShowPlatform: 'base show' says what a base needs, which hosts can resume it, and
// whether this one can, with the reason when it cannot.
func TestBaseShowPlatform(t *testing.T) {
	info := tcgHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	home := t.TempDir()
	bases := travellingBases(t, home, info)
	machine, _ := info.Machine("q35")
	tests := []struct {
		base string
		want []string
	}{
		{"old", []string{
			"Resumes:  on unknown: the base does not record its QEMU version and CPU features",
			"Here:     yes, as far as can be told: this host (QEMU " + info.QEMU + " under tcg) has what the base records",
			"warning: the snapshot's machine type q35 is an alias (here of " + machine + ")"}},
		{"here", []string{
			"Made on:  QEMU " + info.QEMU + " under tcg; CPU max with 3 features: lm sse2 sse4.2",
			"Resumes:  on any x86-64 host whose QEMU ≥ " + majorMinorOf(info.QEMU) + " knows machine " + machine +
				" and CPU model max and gives it all 3 features it had under TCG",
			"Here:     yes, this host can resume it"}},
		{"model", []string{
			"Here:     no, this host (QEMU " + info.QEMU + " under tcg) cannot resume it:",
			"  - it needs CPU model Frobnitz-v9, which this host's QEMU " + info.QEMU + " does not have"}},
		{"haswell", []string{
			"  - it needs CPU model Haswell, which this host's QEMU " + info.QEMU + " under TCG cannot provide: missing features ",
			"warning: the snapshot does not record the QEMU version and CPU features"}},
		{"machine", []string{"  - it needs machine type pc-q35-99.0, which this host's QEMU " + info.QEMU + " does not know"}},
	}
	for _, tc := range tests {
		t.Run(tc.base, func(t *testing.T) {
			r := run(t, ctx, home, "base", "show", "--accel", "tcg", bases[tc.base].ID)
			if r.code != 0 {
				t.Fatalf("base show: exit %d\n%s", r.code, r.stderr)
			}
			for _, want := range tc.want {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("output lacks %q:\n%s", want, r.stdout)
				}
			}
		})
	}
	// A base that arrives from elsewhere is imported, with a warning if this host cannot
	// resume it (a model QEMU lacks, under any accelerator).
	t.Run("import", func(t *testing.T) {
		for name, warned := range map[string]bool{"model": true, "here": false} {
			export := filepath.Join(t.TempDir(), name+".base")
			if r := run(t, ctx, home, "base", "export", bases[name].ID, "-o", export); r.code != 0 {
				t.Fatalf("export: %s", r.stderr)
			}
			r := run(t, ctx, t.TempDir(), "base", "import", export)
			want := "cannot resume base " + bases[name].ID + ": it needs CPU model Frobnitz-v9"
			if r.code != 0 || strings.Contains(r.stderr, want) != warned || strings.Contains(r.stderr, "warning") != warned {
				t.Errorf("import of base %s: exit %d, stderr:\n%s\nwant a warning %v", name, r.code, r.stderr, warned)
			}
		}
	})
	t.Run("json", func(t *testing.T) {
		for name, can := range map[string]bool{"here": true, "haswell": false} {
			r := run(t, ctx, home, "--json", "base", "show", "--accel", "tcg", bases[name].ID)
			var got struct {
				Here struct {
					CanResume bool     `json:"can_resume"`
					Reasons   []string `json:"reasons"`
				} `json:"this_host"`
			}
			if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got.Here.CanResume != can || can == (len(got.Here.Reasons) > 0) {
				t.Errorf("base %s: got %+v (%v) from %s, want can_resume %v with reasons if not", name, got.Here, err, r.stdout, can)
			}
		}
	})
}

func majorMinorOf(v string) string {
	p := strings.SplitN(v, ".", 3)
	return p[0] + "." + p[1]
}

// qemuOnPath puts a QEMU first on PATH that logs each command line and runs the real one, for
// the cloudlet commands this test runs: a probe (-machine none) is told from a VM (-incoming).
func qemuOnPath(t *testing.T) (calls func() []string) {
	t.Helper()
	real, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	log := filepath.Join(dir, "calls.log")
	script := "#!/bin/sh\necho \"$*\" >> " + log + "\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "qemu-system-x86_64"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return func() []string {
		b, _ := os.ReadFile(log)
		if len(bytes.TrimSpace(b)) == 0 {
			return nil
		}
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
}

// emptyOverlay is a valid overlay for b that changes nothing: a synthesis of it gets as far as
// the resume.
func emptyOverlay(t *testing.T, b *base.Base) string {
	t.Helper()
	var id [32]byte
	if _, err := hex.Decode(id[:], []byte(b.ID)); err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(b.Manifest.VM)
	m := overlay.Meta{BaseID: id, Codec: overlay.CodecXZ, Config: cfg, Images: []overlay.Image{
		{Name: "disk", Size: b.Manifest.Files[base.DiskFile].Size},
		{Name: "memory", Size: b.Manifest.Files[base.MemoryFile].Size}}}
	var buf bytes.Buffer
	if _, err := overlay.Write(context.Background(), &buf, t.TempDir(), m, []byte("devstate"), nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "app.overlay")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestResumeRefusedBeforeQEMUStarts: 'base resume' and 'synthesis' of a base whose CPU model,
// CPU features or machine type this host cannot provide fail with that reason, and no QEMU
// ever runs a VM for them: the only QEMU started is one probe, by the first command; the
// others read its answer kept under the home, until the QEMU binary changes.
func TestResumeRefusedBeforeQEMUStarts(t *testing.T) {
	info := tcgHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	home := t.TempDir()
	t.Cleanup(func() { noQEMULeft(t, home) })
	bases := travellingBases(t, home, info)
	calls := qemuOnPath(t)
	fakeBin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		base string
		want string
	}{
		{"model", "needs CPU model Frobnitz-v9, which this host's QEMU " + info.QEMU + " does not have"},
		{"haswell", "needs CPU model Haswell, which this host's QEMU " + info.QEMU + " under TCG cannot provide: missing features "},
		{"machine", "needs machine type pc-q35-99.0, which this host's QEMU " + info.QEMU + " does not know"},
	}
	for _, tc := range tests {
		b := bases[tc.base]
		commands := map[string][]string{
			"base resume": {"base", "resume", "--accel", "tcg", b.ID},
			"synthesis":   {"synthesis", "--accel", "tcg", b.ID, emptyOverlay(t, b)},
			// Refused before libvirt is asked: no daemon listens at this URI.
			"base resume, libvirt": {"base", "resume", "--accel", "tcg", "--driver", "libvirt",
				"--libvirt-uri", "qemu+unix:///system?socket=" + filepath.Join(t.TempDir(), "none.sock"), b.ID},
		}
		for name, args := range commands {
			t.Run(tc.base+"/"+name, func(t *testing.T) {
				before := len(calls())
				r := run(t, ctx, home, args...)
				if r.code == 0 || !strings.Contains(r.stderr, "base "+b.ID+" "+tc.want) {
					t.Fatalf("exit %d, stderr:\n%s\nwant a failure with %q", r.code, r.stderr, "base "+b.ID+" "+tc.want)
				}
				want := 0
				if before == 0 {
					want = 1 // the first command in this home asks QEMU
				}
				after := calls()
				if len(after) != before+want || want == 1 && !strings.Contains(after[len(after)-1], "-machine none") {
					t.Fatalf("QEMU ran as %q: want %d probes (-machine none) and no VM", after[before:], want)
				}
			})
		}
	}
	// The server's sessions run in supervisors of their own, which check the same way. (A
	// model QEMU lacks is refused under any accelerator, so this holds where serve picks KVM.)
	t.Run("server", func(t *testing.T) {
		addr, _ := startServe(t, home)
		b := bases["model"]
		r := run(t, ctx, home, "client", "-s", addr, "--base", b.ID, "-o", emptyOverlay(t, b))
		want := "base " + b.ID + " needs CPU model Frobnitz-v9, which this host's QEMU " + info.QEMU + " does not have"
		t.Logf("client: %s%s", r.stdout, r.stderr)
		if r.code == 0 || !strings.Contains(r.stdout+r.stderr, want) {
			t.Fatalf("client: exit %d\n%s%s\nwant a failure with %q", r.code, r.stdout, r.stderr, want)
		}
	})
	if c := calls(); len(c) != 1 {
		t.Errorf("QEMU ran as %q: want one probe for every command and the server", c)
	}
	// A changed QEMU is asked again.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(fakeBin, later, later); err != nil {
		t.Fatal(err)
	}
	b := bases["model"]
	if r := run(t, ctx, home, "base", "resume", "--accel", "tcg", b.ID); r.code == 0 {
		t.Fatalf("base resume of %s succeeded", b.ID)
	}
	if c := calls(); len(c) != 2 || !strings.Contains(c[1], "-machine none") {
		t.Errorf("QEMU ran as %q after it changed: want a second probe", c)
	}
}

// TestBaseCreateRecordsPlatform: a real 'base create' records the versioned machine type it
// ran on, the CPU model with its features, and the QEMU version; 'base show' finds that this
// host can resume it with nothing unknown; and the base resumes and answers on the recorded
// (versioned) machine type.
func TestBaseCreateRecordsPlatform(t *testing.T) {
	g := testguest.Get(t)
	info := tcgHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	home := t.TempDir()
	t.Cleanup(func() { noQEMULeft(t, home) })
	port := testguest.FreePort(t)
	r := run(t, ctx, home, "base", "create", "--disk", g.RootFS, "--kernel", g.Kernel, "--initrd", g.Initrd,
		"--memory", "128M", "--accel", "tcg", "--ready", fmt.Sprintf("http://127.0.0.1:%d/", port),
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:80", port))
	if r.code != 0 {
		t.Fatalf("base create: exit %d\n%s", r.code, r.stderr)
	}
	id := strings.TrimSpace(r.stdout)
	r = run(t, ctx, home, "--json", "base", "show", "--accel", "tcg", id)
	var shown struct {
		Manifest base.Manifest `json:"manifest"`
		Hosts    string        `json:"hosts"`
		Here     hostVerdict   `json:"this_host"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &shown); err != nil {
		t.Fatalf("base show: %v\n%s%s", err, r.stdout, r.stderr)
	}
	c := shown.Manifest.VM
	machine, _ := info.Machine("q35")
	if c.Machine != machine || c.CPU != "max" || c.Platform == nil {
		t.Fatalf("recorded machine %q, CPU %q, platform %+v: want %s, max and a platform", c.Machine, c.CPU, c.Platform, machine)
	}
	p := c.Platform
	has := map[string]bool{}
	for _, f := range p.CPUFeatures {
		has[f] = true
	}
	if p.QEMU != info.QEMU || p.Accel != "tcg" || p.CPUMigrationSafe || !has["lm"] || !has["sse2"] || len(p.CPUFeatures) < 20 {
		t.Fatalf("recorded platform %+v: want QEMU %s, tcg, not migration-safe, and max's features (lm, sse2, ...)", p, info.QEMU)
	}
	t.Logf("recorded: machine %s, CPU %s with %d features, QEMU %s", c.Machine, c.CPU, len(p.CPUFeatures), p.QEMU)
	if !shown.Here.CanResume || len(shown.Here.Warnings) > 0 || !strings.Contains(shown.Hosts, "QEMU ≥ "+majorMinorOf(info.QEMU)+" knows machine "+machine) {
		t.Fatalf("base show: this host %+v, hosts %q: want resumable with no warnings", shown.Here, shown.Hosts)
	}
	resumeAndGet(t, ctx, home, id, syscall.SIGINT)
}

// TestBaseCreateRefusesWhatQEMUWouldDrop: 'base create' with a CPU model or machine type this
// host cannot fully provide is refused before anything boots (QEMU would boot it, dropping
// the features it lacks with a warning, and the base would record a CPU its guest never saw).
func TestBaseCreateRefusesWhatQEMUWouldDrop(t *testing.T) {
	info := tcgHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	calls := qemuOnPath(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"model with features TCG lacks", []string{"--cpu", "Haswell"},
			"cannot make the base: it needs CPU model Haswell, which this host's QEMU " + info.QEMU + " under TCG cannot provide: missing features "},
		{"unknown model", []string{"--cpu", "Frobnitz-v9"}, "needs CPU model Frobnitz-v9, which this host's QEMU " + info.QEMU + " does not have"},
		{"unknown machine", []string{"--machine", "pc-q35-99.0"}, "needs machine type pc-q35-99.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			home := t.TempDir()
			args := append([]string{"base", "create", "--disk", disk, "--accel", "tcg", "--ready", "serial:never"}, tc.args...)
			r := run(t, ctx, home, args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, stderr:\n%s\nwant a failure with %q", r.code, r.stderr, tc.want)
			}
		})
	}
	for _, c := range calls() {
		if !strings.Contains(c, "-machine none") {
			t.Errorf("QEMU ran as %q: want probes only", c)
		}
	}
}
