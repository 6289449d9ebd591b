package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// TestMountOverlayEndToEnd mounts an app overlay of the test guest from loopback HTTP origins:
// a stock QEMU started from the mount's qemu.args resumes it and the app answers before the
// overlay is complete; a read-only loop mount reads the app's files while chunks stream in;
// a corrupt blob and a dead origin make pending reads fail with EIO, and nothing hangs.
func TestMountOverlayEndToEnd(t *testing.T) {
	g := testguest.Get(t)
	testguest.Require(t, "qemu-system-x86_64", "losetup", "mount", "umount")
	testguest.RequireFUSE(t)
	if os.Geteuid() != 0 {
		t.Fatal("a loop mount needs root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	home := t.TempDir()

	port := testguest.FreePort(t)
	r := run(t, ctx, home, "base", "create", "--disk", g.RootFS, "--kernel", g.Kernel, "--initrd", g.Initrd,
		"--memory", "128M", "--name", "mount-e2e",
		"--ready", fmt.Sprintf("http://127.0.0.1:%d/", port), "--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:80", port))
	if r.code != 0 {
		t.Fatalf("base create: exit %d\n%s", r.code, r.stderr)
	}
	id := strings.TrimSpace(r.stdout[strings.LastIndex(strings.TrimSpace(r.stdout), "\n")+1:])
	dir := t.TempDir()
	file, applied := filepath.Join(dir, "app.overlay"), filepath.Join(dir, "applied")
	p8080 := testguest.FreePort(t)
	// sync: the new file reaches the disk image itself, not only the guest's page cache, so a
	// loop mount of the disk sees it. The app's data on disk (written past the page cache, so
	// that RAM holds no copy) is most of the overlay, and the app does not read it to answer:
	// a stock QEMU, which keeps its hugepage advice, reads several MiB around each page of
	// RAM it touches, and so needs most of the overlay's memory before the app answers.
	r = run(t, ctx, home, "overlay", "create", id,
		"--exec", "mkdir -p /www2 && echo custom-app > /www2/index.html && sync && sync",
		"--exec", "dd if=/dev/urandom of=/app-data bs=1M count=16 oflag=direct 2>/dev/null && sync",
		"--exec", "httpd -p 8080 -h /www2",
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", p8080), "--ready", fmt.Sprintf("http://127.0.0.1:%d/", p8080),
		"-o", file)
	if r.code != 0 {
		t.Fatalf("overlay create: exit %d\n%s", r.code, r.stderr)
	}
	if r := run(t, ctx, home, "overlay", "apply", file, "--base", id, "--out", applied); r.code != 0 {
		t.Fatalf("overlay apply: %s", r.stderr)
	}
	data := mustRead(t, file)
	t.Logf("overlay: %d bytes", len(data))

	baseDir := filepath.Join(home, "bases", id)
	before := fileDigests(t, baseDir)
	overlayBefore := fileDigests(t, dir)

	t.Run("stock qemu from qemu.args", func(t *testing.T) { testStockQEMU(t, ctx, home, id, data, applied) })
	t.Run("read-only loop mount", func(t *testing.T) { testReadOnlyLoop(t, ctx, home, id, data) })
	t.Run("failed fetch", func(t *testing.T) { testFailedFetch(t, ctx, home, id, data) })
	// A VM wrote to its disk through the mounts: the writes went to the caches alone.
	if after := fileDigests(t, baseDir); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("the mounts changed the base:\nbefore %v\nafter  %v", before, after)
	}
	if after := fileDigests(t, dir); fmt.Sprint(after) != fmt.Sprint(overlayBefore) {
		t.Fatal("the mounts changed the overlay file")
	}
}

// overlayMount is a running 'cloudlet mount --overlay': its later stdout lines arrive on lines.
type overlayMount struct {
	cmd    *exec.Cmd
	dir    string
	lines  chan string
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startOverlayMount(t *testing.T, ctx context.Context, home, id, mp string, args ...string) *overlayMount {
	t.Helper()
	m := &overlayMount{dir: mp, lines: make(chan string, 16), stderr: &lockedBuffer{}}
	m.cmd = exec.CommandContext(ctx, cloudletBin, append([]string{"mount", id, mp}, args...)...)
	m.cmd.Env = append(os.Environ(), "CLOUDLET_HOME="+home)
	m.cmd.Stderr = m.stderr
	out, err := m.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(m.lines)
		s := bufio.NewScanner(out)
		for s.Scan() {
			m.lines <- s.Text()
		}
	}()
	t.Cleanup(func() { m.stop(t) })
	if line := m.next(t, time.Minute); !strings.HasPrefix(line, "ready ") {
		t.Fatalf("mount: first line %q\n%s", line, m.stderr)
	}
	return m
}

// next is the mount's next stdout line.
func (m *overlayMount) next(t *testing.T, d time.Duration) string {
	t.Helper()
	select {
	case line, ok := <-m.lines:
		if !ok {
			t.Fatalf("mount ended: %s", m.stderr)
		}
		return line
	case <-time.After(d):
		t.Fatalf("no line from the mount after %v\n%s", d, m.stderr)
	}
	return ""
}

// said reports whether the mount printed a line starting with prefix so far, without waiting.
func (m *overlayMount) said(prefix string) bool {
	for {
		select {
		case line := <-m.lines:
			if strings.HasPrefix(line, prefix) {
				return true
			}
		default:
			return false
		}
	}
}

// stop ends the mount with SIGTERM: it must unmount within 30 s. Its exit status is not
// checked (after a failed fetch it is the failure).
func (m *overlayMount) stop(t *testing.T) {
	m.cmd.Process.Signal(syscall.SIGTERM)
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- m.cmd.Wait() }()
	select {
	case <-done:
		t.Logf("the mount ended %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		// SIGQUIT: the Go runtime prints every goroutine's stack, which says where it hangs.
		m.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			m.cmd.Process.Kill()
			<-done
		}
		t.Errorf("mount still runs 30 s after SIGTERM\n%s", m.stderr)
	}
	if mounted(m.dir) {
		t.Errorf("%s still mounted", m.dir)
	}
}

// testStockQEMU: qemu-system-x86_64, started here from qemu.args with the mount's device state
// and monitor commands, resumes the custom VM; the app answers before the overlay is complete;
// once complete, the images equal 'overlay apply's; a remount of the cache fetches no blob
// again and keeps the VM's writes. The same resume with QEMU's hugepage advice dropped (through
// cloudlet's launcher) shows what keeping it costs.
func testStockQEMU(t *testing.T, ctx context.Context, home, id string, data []byte, applied string) {
	r := resumeFromMount(t, ctx, home, id, data, false)
	defer r.s.Close()
	defer r.s.CloseClientConnections()
	defer r.stopQEMU()
	for line := r.m.next(t, 5*time.Minute); line != "complete"; line = r.m.next(t, 5*time.Minute) {
		if strings.HasPrefix(line, "failed") {
			t.Fatalf("mount: %s\n%s", line, r.m.stderr)
		}
	}
	t.Logf("complete after %v", time.Since(r.start))
	r.stopQEMU()
	time.Sleep(300 * time.Millisecond) // the cache's presence map is flushed every 100 ms
	var disk []byte
	for _, im := range []struct{ name, file string }{{"disk", base.DiskFile}, {"memory", base.MemoryFile}} {
		got := mustRead(t, filepath.Join(r.mp, im.name, "image"))
		want := mustRead(t, filepath.Join(applied, im.file))
		presence := mustRead(t, filepath.Join(r.cache, im.name+".presence"))
		if len(got) != len(want) {
			t.Fatalf("%s/image: %d bytes, want %d", im.name, len(got), len(want))
		}
		written := 0
		for c := 0; c*chunk.Size < len(got); c++ {
			lo, hi := c*chunk.Size, min((c+1)*chunk.Size, len(got))
			if presence[c] == 2 { // the VM wrote it: its bytes are the VM's, not the overlay's
				written++
				continue
			}
			if !bytes.Equal(got[lo:hi], want[lo:hi]) {
				t.Fatalf("%s/image chunk %d differs from overlay apply's", im.name, c)
			}
		}
		if im.name == "memory" && written > 0 {
			t.Fatalf("memory/image: %d chunks written by a resume that maps it privately", written)
		}
		if im.name == "disk" {
			disk = got
		}
		t.Logf("%s/image equals overlay apply's output (%d chunks written by the VM skipped)", im.name, written)
	}

	r.m.stop(t)
	before := r.s.Bytes.Load()
	m := startOverlayMount(t, ctx, home, id, r.mp, "--overlay", r.s.URL(), "--cache", r.cache)
	if line := m.next(t, time.Minute); line != "complete" {
		t.Fatalf("remount of a complete cache: %q, want complete\n%s", line, m.stderr)
	}
	// The index again, and the blobs of chunks the VM wrote (the fetcher counts a blob as
	// done only when all its chunks hold the overlay's bytes), not the rest.
	again := r.s.Bytes.Load() - before
	if again > int64(len(data))/4 {
		t.Fatalf("remount of a complete cache fetched %d of %d bytes", again, len(data))
	}
	t.Logf("remount of the complete cache: complete at once, %d bytes fetched (index and blobs of chunks the VM wrote)", again)
	if !bytes.Equal(mustRead(t, filepath.Join(r.mp, "disk", "image")), disk) {
		t.Fatal("the remount lost what the VM wrote to its disk")
	}

	t.Run("hugepage advice dropped", func(t *testing.T) {
		r := resumeFromMount(t, ctx, home, id, data, true)
		defer r.s.Close()
		defer r.s.CloseClientConnections()
		r.stopQEMU()
	})
}

// stockRun is a stock QEMU resumed from a mount of the overlay.
type stockRun struct {
	s         *origin.ShapedServer
	m         *overlayMount
	mp, cache string
	start     time.Time
	stopQEMU  func()
}

// resumeFromMount mounts the overlay from a shaped origin, starts QEMU from the mount's files
// (through cloudlet's launcher, which drops the hugepage advice, with launcher), and waits for
// the app's answer, which must come before the overlay is complete.
func resumeFromMount(t *testing.T, ctx context.Context, home, id string, data []byte, launcher bool) *stockRun {
	t.Helper()
	r := &stockRun{s: origin.NewShapedServer(data), mp: t.TempDir(), cache: t.TempDir()}
	r.s.Shape(5*time.Millisecond, 1<<20) // 8 Mbit/s: the overlay takes many seconds
	port := testguest.FreePort(t)
	r.m = startOverlayMount(t, ctx, home, id, r.mp, "--overlay", r.s.URL(), "--cache", r.cache,
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", port))
	for _, name := range []string{"devstate", "vm.json", "kernel", "initrd", "qemu.args", "resume.qmp", "resume.sh"} {
		if st, err := os.Stat(filepath.Join(r.mp, name)); err != nil || st.Size() == 0 {
			t.Fatalf("%s in the mount: %v", name, err)
		}
	}
	r.start = time.Now()
	r.stopQEMU = startStockQEMU(t, ctx, r.mp, launcher)
	body := waitBody(t, ctx, fmt.Sprintf("http://127.0.0.1:%d/", port))
	answered, fetched := time.Since(r.start), r.s.Bytes.Load()
	if !strings.Contains(body, "custom-app") {
		t.Fatalf("the app answered %q", body)
	}
	if r.m.said("complete") || chunksPending(t, r.mp) == 0 {
		t.Fatalf("the overlay was complete before the app answered (%d of %d bytes fetched)", fetched, len(data))
	}
	stats := strings.ReplaceAll(string(mustRead(t, filepath.Join(r.mp, "stats", "memory"))), "\n", " ")
	t.Logf("QEMU (launcher %v): the app answered after %v, with %d of %d overlay bytes fetched; stats/memory: %s",
		launcher, answered.Round(time.Millisecond), fetched, len(data), stats)
	return r
}

// startStockQEMU runs qemu-system-x86_64 with the arguments in MP/qemu.args, the device state
// on fd 3 and MP/resume.qmp on its monitor (stdin), and sends cont once the MIGRATION event says
// the state is loaded: what resume.sh does, with nothing of cloudlet in the loop.
func startStockQEMU(t *testing.T, ctx context.Context, mp string, launcher bool) (stop func()) {
	t.Helper()
	args := strings.Split(strings.TrimSuffix(string(mustRead(t, filepath.Join(mp, "qemu.args"))), "\n"), "\n")
	dev, err := os.Open(filepath.Join(mp, "devstate"))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	q := exec.Command("qemu-system-x86_64", args...)
	if launcher {
		// What cloudlet's driver does: its own binary as a launcher drops the advice (see
		// vm.LauncherMain), then execs QEMU.
		var info vmJSON
		if err := json.Unmarshal(mustRead(t, filepath.Join(mp, "vm.json")), &info); err != nil {
			t.Fatal(err)
		}
		path, err := exec.LookPath("qemu-system-x86_64")
		if err != nil {
			t.Fatal(err)
		}
		q = exec.Command(cloudletBin, append([]string{path}, args...)...)
		q.Env = append(os.Environ(), fmt.Sprintf("CLOUDLET_QEMU_LAUNCHER_RAM_BYTES=%d", info.Config.MemoryBytes))
	}
	q.ExtraFiles = []*os.File{dev}
	q.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var qerr lockedBuffer
	q.Stderr = &qerr
	stdin, err := q.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := q.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var reader sync.WaitGroup
	stop = func() {
		once.Do(func() {
			q.Process.Kill()
			reader.Wait() // it ends at the end of QEMU's output
			q.Wait()
		})
	}
	loaded := make(chan error, 1)
	reader.Add(1)
	go func() {
		defer reader.Done()
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if line := s.Text(); strings.Contains(line, `"MIGRATION"`) && strings.Contains(line, `"completed"`) {
				loaded <- nil
				io.Copy(io.Discard, stdout)
				return
			}
		}
		loaded <- errors.New("qemu's monitor closed before the state was loaded")
	}()
	if _, err := stdin.Write(mustRead(t, filepath.Join(mp, "resume.qmp"))); err != nil {
		stop()
		t.Fatalf("qemu's monitor: %v\n%s", err, qerr.String())
	}
	select {
	case err := <-loaded:
		if err != nil {
			stop()
			t.Fatalf("%v\n%s", err, qerr.String())
		}
	case <-time.After(2 * time.Minute):
		stop()
		t.Fatalf("qemu did not load the device state in 2 minutes\n%s", qerr.String())
	}
	if _, err := io.WriteString(stdin, `{"execute":"cont"}`+"\n"); err != nil {
		stop()
		t.Fatal(err)
	}
	return stop
}
