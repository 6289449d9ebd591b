package vm_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/vm"
)

// stockResume runs a StockResume's script with sh, as a user would, from its files in a
// directory of their own: stock QEMU resumes, the guest answers, and the memory file is not
// written. QEMU keeps its hugepage advice on RAM, unless the script runs it through our
// launcher (here, this test binary).
func stockResume(t *testing.T, ctx context.Context, opts vm.Options, devstate string, port int) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		program []string
		env     string
		advice  bool
	}{
		{"stock", nil, "", true},
		{"through the launcher", []string{self, qemu}, fmt.Sprintf("CLOUDLET_QEMU_LAUNCHER_RAM_BYTES=%d", opts.Config.MemoryBytes), false},
	} {
		t.Run(tc.name, func(t *testing.T) { stockResumeOnce(t, ctx, opts, devstate, port, tc.program, tc.env, tc.advice) })
	}
}

func stockResumeOnce(t *testing.T, ctx context.Context, opts vm.Options, devstate string, port int, program []string, env string, advice bool) {
	memSum := sha(t, opts.Memory.Path)
	s, err := vm.NewStockResume(opts)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dev, err := os.ReadFile(devstate)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		vm.StockArgsFile: []byte(strings.Join(s.Args, "\n") + "\n"), vm.StockQMPFile: s.QMP,
		vm.StockDevstateFile: dev, "resume.sh": s.Script,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o400); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("sh", append([]string{filepath.Join(dir, "resume.sh")}, program...)...)
	if env != "" {
		cmd.Env = append(os.Environ(), env)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group: the test ends the script and its QEMU together.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}
	defer stop()
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	code, body, err := 0, "", error(nil)
	for wctx.Err() == nil {
		code, body, err = httpGet(wctx, fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/hello", port))
		if err == nil && code == 200 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(body, "hello from cloudlet-guest") {
		t.Fatalf("stock resume: hello page %d %q (%v); resume.sh said:\n%s", code, body, err, out.String())
	}
	t.Logf("stock resume: first answer after %v (the first request was sent while QEMU loaded the state)", time.Since(start))
	if pid := qemuChild(t, cmd.Process.Pid); pid == 0 {
		t.Fatalf("no QEMU under resume.sh\n%s", out.String())
	} else if flags := ramFlags(t, pid, opts.Memory.Path); strings.Contains(flags, " hg") != advice {
		t.Errorf("RAM VmFlags %s, want hugepage advice %v", flags, advice)
	}
	stop()
	if got := sha(t, opts.Memory.Path); got != memSum {
		t.Fatal("a stock resume changed the memory file")
	}
}

// qemuChild is the pid of the QEMU that the script with pid sh started (its child), or 0.
func qemuChild(t *testing.T, sh int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", sh, sh))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(string(b)) {
		var pid int
		fmt.Sscan(f, &pid)
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && strings.Contains(exe, "qemu-system") {
			return pid
		}
	}
	return 0
}
