package vm_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/vm"
)

func TestMain(m *testing.M) {
	vm.LauncherMain()
	if os.Getenv(madviseChildEnv) != "" {
		madviseChild()
		return
	}
	exposeTestBinary()
	os.Exit(m.Run())
}

// exposeTestBinary lets other users run this test binary, as a confined QEMU under libvirt
// runs it as its launcher: otherwise the driver would leave a copy of it (see launcherBinary)
// in the temporary directory at every build. Its build directory goes when the test ends.
func exposeTestBinary() {
	self, err := os.Executable()
	if err != nil {
		return
	}
	for dir := filepath.Dir(self); dir != os.TempDir() && dir != "/" && dir != "."; dir = filepath.Dir(dir) {
		if st, err := os.Stat(dir); err == nil {
			os.Chmod(dir, st.Mode().Perm()|0o011)
		}
	}
}

// freePort finds a loopback port that nothing listens on.

// guestOptions is a VM on a private copy of the test guest's disk, with RAM in a file.
func guestOptions(t *testing.T, port int) vm.Options {
	t.Helper()
	g := testguest.Get(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if out, err := exec.Command("cp", "--sparse=always", g.RootFS, disk).CombinedOutput(); err != nil {
		t.Fatalf("copy disk: %v: %s", err, out)
	}
	cfg := vm.DefaultConfig()
	cfg.MemoryBytes = 128 << 20
	return vm.Options{
		Config:    cfg,
		Kernel:    g.Kernel,
		Initrd:    g.Initrd,
		Disk:      vm.Disk{Path: disk},
		Memory:    vm.Memory{Path: filepath.Join(dir, "memory.img"), Share: true},
		Forwards:  []vm.Forward{{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: port, GuestPort: 80}},
		SerialLog: testWriter{t},
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Logf("serial: %s", strings.TrimRight(string(p), "\r\n"))
	}
	return len(p), nil
}

func httpGet(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitHTTP polls url until it answers 200.
func waitHTTP(t *testing.T, ctx context.Context, url string) string {
	t.Helper()
	for {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		code, body, err := httpGet(actx, url)
		cancel()
		if err == nil && code == 200 {
			return body
		}
		select {
		case <-ctx.Done():
			t.Fatalf("GET %s: no 200 before the deadline (last: %d, %v)", url, code, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ramFlags returns the VmFlags of QEMU's mapping of the RAM file, from /proc/PID/smaps.
func ramFlags(t *testing.T, pid int, memPath string) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in := false
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		if strings.Contains(line, " "+memPath) {
			in = true
		}
		if in && strings.HasPrefix(line, "VmFlags:") {
			return line
		}
	}
	t.Fatalf("no mapping of %s in QEMU's smaps", memPath)
	return ""
}

// TestBootSnapshotResume walks the driver's whole life cycle on the real test guest: boot with
// RAM in a shared file, serial commands, snapshot, then two private resumes that answer HTTP.
func TestBootSnapshotResume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	port := testguest.FreePort(t)
	opts := guestOptions(t, port)

	v, err := vm.Boot(ctx, opts)
	if err != nil {
		t.Fatalf("boot: %v", err)
	}
	t.Cleanup(v.Kill)
	if v.Accel() != vm.AccelTCG && v.Accel() != vm.AccelKVM {
		t.Fatalf("accel %q", v.Accel())
	}
	if flags := ramFlags(t, v.PID(), opts.Memory.Path); strings.Contains(flags, " hg") {
		t.Errorf("RAM mapping still has MADV_HUGEPAGE under the launcher: %s", flags)
	}
	if err := v.Console().WaitFor(ctx, "cloudlet-guest: ready"); err != nil {
		t.Fatal(err)
	}
	if body := waitHTTP(t, ctx, fmt.Sprintf("http://127.0.0.1:%d/", port)); !strings.Contains(body, "cloudlet test guest") {
		t.Fatalf("index page: %q", body)
	}
	// The serial shell: output and exit status come back, and state persists into the snapshot.
	out, status, err := v.Console().Run(ctx, "echo snapshot-marker > /root/marker; cat /root/marker")
	if err != nil || status != 0 || !strings.Contains(out, "snapshot-marker") {
		t.Fatalf("serial run: %q, status %d, %v", out, status, err)
	}
	if _, status, err := v.Console().Run(ctx, "false"); err != nil || status != 1 {
		t.Fatalf("serial run of false: status %d, %v", status, err)
	}

	devstate := filepath.Join(filepath.Dir(opts.Memory.Path), "devstate")
	if err := v.Snapshot(ctx, devstate); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	select {
	case <-v.Done():
	default:
		t.Fatal("QEMU still runs after the snapshot")
	}
	st, err := os.Stat(devstate)
	if err != nil || st.Size() == 0 || st.Size() > 4<<20 {
		t.Fatalf("device state: %v, %d bytes (RAM must not be in it)", err, st.Size())
	}
	t.Logf("device state: %d bytes", st.Size())
	memSum := sha(t, opts.Memory.Path)

	for i := range 2 {
		ropts := opts
		ropts.Memory.Share = false
		ropts.KeepHugepageAdvice = i == 1
		start := time.Now()
		r, err := vm.Resume(ctx, ropts, devstate)
		if err != nil {
			t.Fatalf("resume %d: %v", i, err)
		}
		body := waitHTTP(t, ctx, fmt.Sprintf("http://127.0.0.1:%d/cgi-bin/hello", port))
		t.Logf("resume %d: first answer after %v: %q", i, time.Since(start), body)
		if !strings.Contains(body, "hello from cloudlet-guest") {
			t.Fatalf("resume %d: hello page: %q", i, body)
		}
		// The guest continues where it was: the file written before the snapshot is there.
		out, _, err := r.Console().Run(ctx, "cat /root/marker")
		if err != nil || !strings.Contains(out, "snapshot-marker") {
			t.Fatalf("resume %d: marker: %q, %v", i, out, err)
		}
		flags := ramFlags(t, r.PID(), opts.Memory.Path)
		if hasHG := strings.Contains(flags, " hg"); hasHG != ropts.KeepHugepageAdvice {
			t.Errorf("resume %d (keep advice %v): RAM VmFlags %s", i, ropts.KeepHugepageAdvice, flags)
		}
		if err := r.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if got := sha(t, opts.Memory.Path); got != memSum {
			t.Fatalf("resume %d with share=off changed the memory file", i)
		}
	}

	stockResume(t, ctx, opts, devstate, port)
	checkMismatch(t, ctx, opts, devstate)
}

// checkMismatch resumes a 128 MiB snapshot with 64 MiB of RAM: QEMU's own migration error must
// reach the caller.
func checkMismatch(t *testing.T, ctx context.Context, opts vm.Options, devstate string) {
	t.Helper()
	bad := opts
	bad.Memory.Share = false
	bad.Config.MemoryBytes = 64 << 20
	r, err := vm.Resume(ctx, bad, devstate)
	if err == nil {
		r.Kill()
		t.Fatal("resume with 64 MiB RAM of a 128 MiB snapshot succeeded")
	}
	t.Logf("mismatch error: %v", err)
	if !strings.Contains(err.Error(), "Size mismatch") {
		t.Fatalf("mismatch error lacks QEMU's message: %v", err)
	}
}

func sha(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("sha256sum", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(out))[0]
}

// TestStartErrors checks that QEMU's own complaints come back as errors and leave no process.
func TestStartErrors(t *testing.T) {
	testguest.Require(t, "qemu-system-x86_64")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g := testguest.Get(t)
	dir := t.TempDir()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port

	tests := []struct {
		name   string
		modify func(*vm.Options)
		want   string
	}{
		{"missing disk", func(o *vm.Options) { o.Disk.Path = filepath.Join(dir, "nope.img") }, "nope.img"},
		{"missing kernel", func(o *vm.Options) { o.Kernel = filepath.Join(dir, "vmlinuz-nope") }, "vmlinuz-nope"},
		{"bad machine", func(o *vm.Options) { o.Config.Machine = "no-such-machine" }, "unsupported machine type"},
		{"bad cpu", func(o *vm.Options) { o.Config.CPU = "no-such-cpu" }, "no-such-cpu"},
		{"bad disk format", func(o *vm.Options) { o.Disk.Format = "vmdk" }, "qemu said:"},
		{"port in use", func(o *vm.Options) { o.Forwards[0].HostPort = busyPort }, "already in use"},
		{"no qemu", func(o *vm.Options) { o.QEMU = "qemu-system-none" }, "qemu-system-none not found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := vm.Options{
				Config:   vm.DefaultConfig(),
				Kernel:   g.Kernel,
				Initrd:   g.Initrd,
				Disk:     vm.Disk{Path: g.RootFS},
				Memory:   vm.Memory{Path: filepath.Join(dir, "mem-"+strconv.Itoa(len(tc.name)))},
				Forwards: []vm.Forward{{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: testguest.FreePort(t), GuestPort: 80}},
			}
			tc.modify(&opts)
			v, err := vm.Boot(ctx, opts)
			if err == nil {
				v.Kill()
				t.Fatal("boot succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	if out, _ := exec.Command("pgrep", "-f", "mem-path="+dir).Output(); len(out) > 0 {
		t.Fatalf("QEMU processes left behind: %s", out)
	}
}

// TestContextCancelKillsQEMU: a VM's life is bound to its owner's context.
func TestContextCancelKillsQEMU(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := guestOptions(t, testguest.FreePort(t))
	v, err := vm.Boot(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Kill()
	guest, stop := v.Until(context.Background())
	defer stop()
	cancel()
	select {
	case <-v.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("QEMU still runs 10 s after its context was cancelled")
	}
	// A wait on the guest ends with the VM, and says why.
	select {
	case <-guest.Done():
		if cause := context.Cause(guest); cause == nil || !strings.Contains(cause.Error(), "the VM stopped") {
			t.Fatalf("cause %v", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a context bound to the VM outlived it")
	}
	if err := syscallKill0(v.PID()); err == nil {
		t.Fatal("QEMU process still exists")
	}
}
