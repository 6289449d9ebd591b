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
// written.
func stockResume(t *testing.T, ctx context.Context, opts vm.Options, devstate string, port int) {
	t.Helper()
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
	cmd := exec.Command("sh", filepath.Join(dir, "resume.sh"))
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
	t.Logf("stock resume: first answer after %v", time.Since(start))
	stop()
	if got := sha(t, opts.Memory.Path); got != memSum {
		t.Fatal("a stock resume changed the memory file")
	}
}
