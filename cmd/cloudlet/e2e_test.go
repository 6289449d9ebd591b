package main

import (
	"bufio"
	"strconv"

	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/internal/testguest"
)

// cloudletBin is the cloudlet binary under test, built once by TestMain: the end-to-end tests
// run the command exactly as a user would, launcher re-exec included.
var cloudletBin string

func TestMain(m *testing.M) {
	// Tests kill cloudlet with SIGKILL; its QEMU then dies too, orphaned. As a subreaper the
	// test process adopts such orphans, and reapOrphans collects them: no zombie outlives
	// the tests.
	unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	// The tests of origins and overlays need every chunk fetched, not taken from the chunk
	// cache that an earlier test filled; the cache's own test turns it on.
	os.Setenv("CLOUDLET_CHUNK_CACHE_SIZE", "0")
	dir, err := os.MkdirTemp("", "cloudlet-bin-")
	if err != nil {
		panic(err)
	}
	cloudletBin = filepath.Join(dir, "cloudlet")
	if out, err := exec.Command("go", "build", "-o", cloudletBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building cloudlet: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	reapOrphans()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs the cloudlet command with home as CLOUDLET_HOME and no terminal on stdin.
func run(t *testing.T, ctx context.Context, home string, args ...string) result {
	t.Helper()
	cmd := exec.CommandContext(ctx, cloudletBin, args...)
	cmd.Env = append(os.Environ(), "CLOUDLET_HOME="+home)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("cloudlet %v: %v", args, err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// noQEMULeft fails if a QEMU process that uses files under dir is still running.
func noQEMULeft(t *testing.T, dir string) {
	t.Helper()
	if out, _ := exec.Command("pgrep", "-a", "-f", "qemu-system.*"+regexp.QuoteMeta(dir)).Output(); len(out) > 0 {
		t.Errorf("QEMU left running: %s", out)
	}
}

func fileDigests(t *testing.T, b string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	entries, err := os.ReadDir(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		f, err := os.Open(filepath.Join(b, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		io.Copy(h, f)
		f.Close()
		sums[e.Name()] = hex.EncodeToString(h.Sum(nil))
	}
	return sums
}

// TestBaseEndToEnd is the user's path: build the guest, create a base that waits for the
// guest's HTTP port, resume it twice (each answering through a host forward), and check that
// the base is untouched; then the ways users get it wrong on a real base.
func TestBaseEndToEnd(t *testing.T) {
	g := testguest.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	home := t.TempDir()
	t.Cleanup(func() { noQEMULeft(t, home) })

	port := testguest.FreePort(t)
	r := run(t, ctx, home, "base", "create", "--disk", g.RootFS, "--kernel", g.Kernel, "--initrd", g.Initrd,
		"--memory", "128M", "--name", "e2e",
		"--ready", fmt.Sprintf("http://127.0.0.1:%d/", port), "--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:80", port))
	if r.code != 0 {
		t.Fatalf("base create: exit %d\n%s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	id := lines[len(lines)-1]
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(id) {
		t.Fatalf("last stdout line %q is not a base ID", id)
	}
	baseDir := filepath.Join(home, "bases", id)
	before := fileDigests(t, baseDir)

	resumeAndGet(t, ctx, home, id[:8], syscall.SIGINT)
	resumeAndGet(t, ctx, home, id[:12], syscall.SIGTERM)
	resumeAndGet(t, ctx, home, id, syscall.SIGKILL)
	if after := fileDigests(t, baseDir); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("resume changed the base:\nbefore %v\nafter  %v", before, after)
	}
	t.Run("mount", func(t *testing.T) { testMount(t, ctx, home, id) })
	var overlayFile, applied string
	overlayDir := t.TempDir()
	t.Run("overlay", func(t *testing.T) { overlayFile, applied = testOverlay(t, ctx, home, id, overlayDir) })
	t.Run("synthesis", func(t *testing.T) {
		if overlayFile == "" {
			t.Skip("no overlay: the overlay test failed")
		}
		testSynthesis(t, ctx, home, id, overlayFile, applied)
	})
	if after := fileDigests(t, baseDir); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatal("mount changed the base")
	}
	if r := run(t, ctx, home, "base", "verify", id); r.code != 0 {
		t.Fatalf("base verify: %s", r.stderr)
	}
	if r := run(t, ctx, home, "base", "list"); !strings.Contains(r.stdout, id[:16]) || !strings.Contains(r.stdout, "e2e") {
		t.Fatalf("base list:\n%s", r.stdout)
	}

	// Export, then import into another home: the same ID.
	export := filepath.Join(t.TempDir(), "e2e.base")
	if r := run(t, ctx, home, "base", "export", id, "-o", export); r.code != 0 {
		t.Fatalf("export: %s", r.stderr)
	}
	home2 := t.TempDir()
	if r := run(t, ctx, home2, "base", "import", export); r.code != 0 || strings.TrimSpace(r.stdout) != id {
		t.Fatalf("import: exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	exported, _ := os.ReadFile(export)
	truncated := filepath.Join(t.TempDir(), "truncated.base")
	os.WriteFile(truncated, exported[:len(exported)*2/3], 0o644)

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	// Imports go to a fresh home (this one has the base already); the rest use this home.
	tests := []struct {
		name  string
		fresh bool
		args  []string
		want  string
	}{
		{"unknown base", false, []string{"base", "resume", "0123456789abcdef"}, "no such base"},
		{"short ID", false, []string{"base", "show", id[:5]}, "at least 8"},
		{"truncated export", true, []string{"base", "import", truncated}, "truncated"},
		{"not an export", true, []string{"base", "import", g.Kernel}, "not a base export"},
		{"port in use", false, []string{"base", "resume", id, "--hostfwd", "tcp:" + busy.Addr().String() + "-:80"}, "already in use"},
		{"bad forward", false, []string{"base", "resume", id, "--hostfwd", "tcp:80"}, "want tcp:"},
		{"bad probe", false, []string{"base", "resume", id, "--probe", "gopher://x"}, "want http://"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := home
			if tc.fresh {
				h = t.TempDir()
			}
			r := run(t, ctx, h, tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want a failure mentioning %q", r.code, r.stderr, tc.want)
			}
			if strings.Contains(r.stderr, "panic") {
				t.Fatalf("panic: %s", r.stderr)
			}
		})
	}

	// A damaged device state is caught before QEMU sees it, and named.
	f, err := os.OpenFile(filepath.Join(baseDir, base.DevstateFile), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("garbage"), 4096)
	f.Close()
	if r := run(t, ctx, home, "base", "resume", id); r.code == 0 || !strings.Contains(r.stderr, "devstate: got") {
		t.Fatalf("resume of a damaged base: exit %d, %s", r.code, r.stderr)
	}
}

// resumeAndGet resumes the base, waits for the probe line, fetches pages through the forward
// and ends the command with sig: SIGINT and SIGTERM stop it cleanly; after SIGKILL the kernel
// must take QEMU down with it.
func resumeAndGet(t *testing.T, ctx context.Context, home, id string, sig syscall.Signal) {
	t.Helper()
	port := testguest.FreePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	cmd := exec.CommandContext(ctx, cloudletBin, "base", "resume", id,
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:80", port), "--probe", url+"/")
	cmd.Env = append(os.Environ(), "CLOUDLET_HOME="+home)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "first answer after") {
		cmd.Wait()
		t.Fatalf("resume %s: stdout %q, %v\n%s", id, line, err, stderr.String())
	}
	t.Logf("resume %s: %s", id, strings.TrimSpace(line))
	for _, page := range []struct{ path, want string }{
		{"/", "cloudlet test guest"},
		{"/cgi-bin/hello", "hello from cloudlet-guest"},
		{"/cgi-bin/mem?4", "dirtied 4 MiB"},
		{"/cgi-bin/disk", "/data/blob"},
	} {
		resp, err := http.Get(url + page.path)
		if err != nil {
			t.Fatalf("GET %s: %v", page.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), page.want) {
			t.Fatalf("GET %s: %d %q", page.path, resp.StatusCode, body)
		}
	}
	cmd.Process.Signal(sig)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil && sig != syscall.SIGKILL {
			t.Fatalf("resume after %v: %v\n%s", sig, err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("resume did not stop within 30 s of %v", sig)
	}
	// QEMU goes with its owner, however the owner ends.
	deadline := time.Now().Add(10 * time.Second)
	for {
		reapOrphans()
		out, _ := exec.Command("pgrep", "-f", "qemu-system.*"+regexp.QuoteMeta(home)).Output()
		if len(out) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU still runs 10 s after %v of its owner: %s", sig, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestBaseCreateErrors: bad input is a clear error, and leaves neither a base nor a process.
func TestBaseCreateErrors(t *testing.T) {
	g := testguest.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	junk := filepath.Join(t.TempDir(), "junk.img")
	noise := make([]byte, 8<<20)
	for i := range noise {
		noise[i] = byte(i*7 + i>>9)
	}
	os.WriteFile(junk, noise, 0o644)
	port := testguest.FreePort(t)
	guest := []string{"--kernel", g.Kernel, "--initrd", g.Initrd, "--memory", "128M"}

	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"missing disk", []string{"--disk", "/nonexistent/disk.img", "--ready", "http://127.0.0.1:1/"}, []string{"--disk", "no such file"}},
		{"initrd without kernel", []string{"--disk", g.RootFS, "--initrd", g.Initrd, "--ready", "serial:x"}, []string{"--initrd needs --kernel"}},
		{"no probe and no terminal", []string{"--disk", g.RootFS}, []string{"--ready"}},
		{"bad memory", []string{"--disk", g.RootFS, "--memory", "lots", "--ready", "serial:x"}, []string{"--memory"}},
		{"disk that does not boot", append([]string{"--disk", junk, "--boot-timeout", "20s",
			"--ready", fmt.Sprintf("http://127.0.0.1:%d/", port), "--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:80", port)}, guest...),
			[]string{"not ready within 20s", "cannot mount /dev/vda"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			home := t.TempDir()
			r := run(t, ctx, home, append([]string{"base", "create"}, tc.args...)...)
			if r.code == 0 {
				t.Fatalf("base create succeeded: %s", r.stdout)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Fatalf("stderr %q does not mention %q", r.stderr, w)
				}
			}
			noQEMULeft(t, home)
			s, err := base.Open(home)
			if err != nil {
				t.Fatal(err)
			}
			if list, _ := s.List(); len(list) != 0 {
				t.Fatalf("a failed create left a base")
			}
			if left, _ := os.ReadDir(filepath.Join(home, "tmp")); len(left) != 0 {
				t.Fatalf("a failed create left a draft: %v", left)
			}
		})
	}
}

// httpGetBody returns the body of a 200 answer.
func httpGetBody(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

// reapOrphans waits for adopted children that have exited (zombies whose parent is us).
func reapOrphans() {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(os.Getpid()) {
			var ws unix.WaitStatus
			unix.Wait4(pid, &ws, 0, nil)
		}
	}
}
