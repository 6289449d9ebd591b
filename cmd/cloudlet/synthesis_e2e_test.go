package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// testSynthesis synthesises the overlay from loopback HTTP origins that emulate a link and
// misbehave, as users' origins do.
func testSynthesis(t *testing.T, ctx context.Context, home, id, file, applied string) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	baseDir := filepath.Join(home, "bases", id)
	synth := func(url, cache string, extra ...string) result {
		port := testguest.FreePort(t)
		args := append([]string{"synthesis", id, url, "--cache", cache,
			"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", port), "--probe", fmt.Sprintf("http://127.0.0.1:%d/", port),
			"--probe-timeout", "2m", "--exit-when-complete"}, extra...)
		return run(t, ctx, home, args...)
	}

	t.Run("shaped link", func(t *testing.T) {
		s := origin.NewShapedServer(data)
		defer s.Close()
		s.Shape(10*time.Millisecond, 38e6/8)
		cache := t.TempDir()
		r := synth(s.URL(), cache)
		if r.code != 0 || !strings.Contains(r.stdout, "first_answer") || !strings.Contains(r.stdout, "complete") {
			t.Fatalf("synthesis: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		t.Logf("timeline:\n%s", r.stdout)
		checkCache(t, cache, applied, baseDir)

		// A re-run on the same cache fetches the index again, and no blob.
		before := s.Bytes.Load()
		if r := synth(s.URL(), cache); r.code != 0 {
			t.Fatalf("re-run: %s", r.stderr)
		}
		if again := s.Bytes.Load() - before; again > 1<<20 {
			t.Fatalf("re-run on a complete cache fetched %d bytes", again)
		}

		// A cached chunk damaged behind cloudletfs's back is checked at the next run, named,
		// and fetched again: the cache ends up right.
		c := damagePresentChunk(t, cache, "memory")
		r = synth(s.URL(), cache)
		if want := fmt.Sprintf("image memory: cached chunk %d", c); r.code != 0 || !strings.Contains(r.stderr, want) {
			t.Fatalf("re-run on a damaged cache: exit %d, stderr lacks %q:\n%s", r.code, want, r.stderr)
		}
		checkCache(t, cache, applied, baseDir)
	})
	t.Run("three dropped connections", func(t *testing.T) {
		s := origin.NewShapedServer(data)
		defer s.Close()
		s.DropNext(3)
		cache := t.TempDir()
		if r := synth(s.URL(), cache); r.code != 0 {
			t.Fatalf("synthesis through drops: exit %d\n%s", r.code, r.stderr)
		}
		checkCache(t, cache, applied, baseDir)
	})
	t.Run("changed file", func(t *testing.T) {
		s := origin.NewShapedServer(data)
		defer s.Close()
		s.ChangeBefore(2) // after the size probe pinned the ETag; the small test overlay needs no other request
		r := synth(s.URL(), t.TempDir(), "--no-early-start")
		if r.code == 0 || !strings.Contains(r.stderr, "changed on the server") {
			t.Fatalf("changed file: exit %d\n%s", r.code, r.stderr)
		}
		if strings.Contains(r.stdout, "resumed") {
			t.Fatal("the VM resumed on a changed overlay")
		}
	})
	t.Run("index stalls", func(t *testing.T) { testIndexStalls(t, ctx, home, id, data) })
	t.Run("corrupt blob", func(t *testing.T) {
		bad := bytes.Clone(data)
		bad[len(bad)-50] ^= 0x01
		s := origin.NewShapedServer(bad)
		defer s.Close()
		r := synth(s.URL(), t.TempDir())
		if r.code == 0 || !strings.Contains(r.stderr, "digest") || !strings.Contains(r.stderr, "the VM was") {
			t.Fatalf("corrupt blob: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("profile", func(t *testing.T) {
		profiled := filepath.Join(t.TempDir(), "profiled.overlay")
		port := testguest.FreePort(t)
		r := run(t, ctx, home, "overlay", "profile", file, "--base", id, "-o", profiled,
			"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", port), "--probe", fmt.Sprintf("http://127.0.0.1:%d/", port), "--tail", "200ms")
		if r.code != 0 || !strings.Contains(r.stderr, "working set:") {
			t.Fatalf("overlay profile: exit %d\n%s", r.code, r.stderr)
		}
		if info := run(t, ctx, home, "overlay", "info", profiled); !strings.Contains(info.stdout, "working set: ") || strings.Contains(info.stdout, "not profiled") {
			t.Fatalf("profiled overlay info:\n%s", info.stdout)
		}
		if r := run(t, ctx, home, "overlay", "verify", profiled, "--base", id); r.code != 0 {
			t.Fatalf("profiled overlay does not verify: %s", r.stderr)
		}
		// The profiled overlay rebuilds the same images.
		s := origin.NewShapedServer(mustRead(t, profiled))
		defer s.Close()
		cache := t.TempDir()
		if r := synth(s.URL(), cache); r.code != 0 {
			t.Fatalf("synthesis of the profiled overlay: %s", r.stderr)
		}
		checkCache(t, cache, applied, baseDir)
	})
	t.Run("chunk cache", func(t *testing.T) { testChunkCache(t, ctx, home, id) })
	t.Run("server and client", func(t *testing.T) { testServer(t, ctx, home, id, data) })
	t.Run("guest isolation", func(t *testing.T) { testIsolation(t, ctx, home, id, file) })
	t.Run("sessions outlive the server", func(t *testing.T) { testSessionsOutliveServer(t, ctx, home, id) })
	t.Run("detach", func(t *testing.T) {
		port := testguest.FreePort(t)
		r := run(t, ctx, home, "synthesis", id, file, "--detach", "--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", port),
			"--probe", fmt.Sprintf("http://127.0.0.1:%d/", port))
		var pid int
		if _, err := fmt.Sscanf(r.stdout, "synthesis runs detached as pid %d", &pid); r.code != 0 || err != nil {
			t.Fatalf("--detach: exit %d, %q, %s", r.code, r.stdout, r.stderr)
		}
		if body := waitBody(t, ctx, fmt.Sprintf("http://127.0.0.1:%d/", port)); !strings.Contains(body, "custom-app") {
			t.Fatalf("detached VM answered %q", body)
		}
		syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(20 * time.Second)
		for reapOrphans(); alive(pid); reapOrphans() {
			if time.Now().After(deadline) {
				t.Fatal("detached synthesis still runs 20 s after SIGTERM")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("bad source", func(t *testing.T) {
		r := run(t, ctx, home, "synthesis", id, "http://127.0.0.1:1/overlay", "--exit-when-complete", "--retry-for", "2s")
		if r.code == 0 || !strings.Contains(r.stderr, "refused") {
			t.Fatalf("dead origin: %s", r.stderr)
		}
	})
}

// checkCache compares the materialised cache with 'overlay apply': every chunk delivered from
// the overlay equals the applied image, every chunk left to the base equals the base, and
// chunks the running VM wrote itself are skipped.
func checkCache(t *testing.T, cache, applied, baseDir string) {
	t.Helper()
	for _, im := range []struct{ name, file string }{{"disk", base.DiskFile}, {"memory", base.MemoryFile}} {
		presence, err := os.ReadFile(filepath.Join(cache, im.name+".presence"))
		if err != nil {
			t.Fatal(err)
		}
		cached, _ := os.ReadFile(filepath.Join(cache, im.name+".cache"))
		want, _ := os.ReadFile(filepath.Join(applied, im.file))
		baseImg, _ := os.ReadFile(filepath.Join(baseDir, im.file))
		delivered := 0
		for c, p := range presence {
			lo, hi := c*chunk.Size, min((c+1)*chunk.Size, len(want))
			switch p {
			case 1:
				delivered++
				if !bytes.Equal(cached[lo:hi], want[lo:hi]) {
					t.Fatalf("%s chunk %d: cache differs from overlay apply", im.name, c)
				}
			case 0:
				if !bytes.Equal(want[lo:hi], baseImg[lo:hi]) && !bytes.Equal(want[lo:hi], make([]byte, hi-lo)) {
					t.Fatalf("%s chunk %d: the overlay changes it, but it was never delivered", im.name, c)
				}
			}
		}
		if im.name == "memory" && delivered == 0 {
			t.Fatalf("no memory chunk was delivered")
		}
	}
}

// damagePresentChunk flips a byte of the first chunk of image that the cache holds as the
// overlay's, and returns the chunk's number.
func damagePresentChunk(t *testing.T, cache, image string) int {
	t.Helper()
	presence := mustRead(t, filepath.Join(cache, image+".presence"))
	c := bytes.IndexByte(presence, 1)
	if c < 0 {
		t.Fatalf("no present chunk in the %s cache", image)
	}
	f, err := os.OpenFile(filepath.Join(cache, image+".cache"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	off := int64(c)*chunk.Size + 100
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	return c
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testServer runs 'cloudlet serve' and drives it with 'cloudlet client' (upload and URL) and
// with junk requests.
func testServer(t *testing.T, ctx context.Context, home, id string, data []byte) {
	t.Cleanup(func() { noQEMULeft(t, home) }) // after the server's own cleanup
	// The test's origin is on loopback, which the server refuses unless allowed.
	addr, serr := startServe(t, home, "--max-sessions", "1", "--allow-origin", "127.0.0.0/8")
	file := filepath.Join(t.TempDir(), "app.overlay")
	os.WriteFile(file, data, 0o644)
	origin := origin.NewShapedServer(data)
	defer origin.Close()

	for _, src := range [][]string{{"-o", file}, {"-u", origin.URL()}} {
		sid := clientSession(t, ctx, home, addr, id, serr, src...)
		// With one session running, the limit of one refuses another.
		busy := run(t, ctx, home, "client", "-s", addr, "--base", id, "-u", origin.URL())
		if busy.code == 0 || !strings.Contains(busy.stderr, "429") || !strings.Contains(busy.stderr, "too many sessions") {
			t.Fatalf("a second session over the limit: exit %d, %s", busy.code, busy.stderr)
		}
		if r := run(t, ctx, home, "client", "-s", addr, "--stop", sid); r.code != 0 {
			t.Fatalf("client --stop: %s", r.stderr)
		}
	}

	bad := []struct {
		name, method, path, ctype, body string
		code                            int
	}{
		{"junk JSON", "POST", "/v1/sessions", "application/json", "{not json", 400},
		{"unknown field", "POST", "/v1/sessions", "application/json", `{"base":"x","url":"http://a/b","what":1}`, 400},
		{"no url", "POST", "/v1/sessions", "application/json", `{"base":"` + id + `"}`, 400},
		{"bad url", "POST", "/v1/sessions", "application/json", `{"base":"` + id + `","url":"file:///etc/passwd"}`, 400},
		{"unknown base", "POST", "/v1/sessions", "application/json", `{"base":"0123456789abcdef","url":"http://a/b"}`, 404},
		{"probe port not forwarded", "POST", "/v1/sessions", "application/json", `{"base":"` + id + `","url":"http://a/b","probe_port":80}`, 400},
		{"unknown session", "GET", "/v1/sessions/nope", "", "", 404},
		{"unknown endpoint", "GET", "/v2/x", "", "", 404},
	}
	for _, b := range bad {
		req, _ := http.NewRequest(b.method, "http://"+addr+b.path, strings.NewReader(b.body))
		req.Header.Set("Authorization", "Bearer "+serverToken(t, home))
		if b.ctype != "" {
			req.Header.Set("Content-Type", b.ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != b.code && !(b.name == "probe port not forwarded" && resp.StatusCode >= 400) || !strings.Contains(string(msg), `"error"`) {
			t.Errorf("%s: %d %s, want %d with a JSON error", b.name, resp.StatusCode, msg, b.code)
		}
	}
	if code, msg := apiGet(t, "", "http://"+addr+"/v1/sessions"); code != http.StatusUnauthorized {
		t.Errorf("a request without the token: %d %s, want 401", code, msg)
	}
}

// clientSession starts a session of the test app overlay with 'cloudlet client', checks that
// the custom app answers through the forwarded port, and returns the session ID.
func clientSession(t *testing.T, ctx context.Context, home, addr, id string, serr *bytes.Buffer, src ...string) string {
	t.Helper()
	r := run(t, ctx, home, append([]string{"client", "-s", addr, "--base", id[:12], "--probe", "8080/"}, src...)...)
	if r.code != 0 || !strings.Contains(r.stdout, "first_answer") || !strings.Contains(r.stdout, "guest port 8080 is at") {
		t.Fatalf("client %v: exit %d\n%s\n%s\nserver: %s", src, r.code, r.stdout, r.stderr, serr.String())
	}
	var fwd string
	for _, l := range strings.Split(r.stdout, "\n") {
		if a, ok := strings.CutPrefix(l, "guest port 8080 is at "); ok {
			fwd = a
		}
	}
	if body := waitBody(t, ctx, "http://"+fwd+"/"); !strings.Contains(body, "custom-app") {
		t.Fatalf("custom app through %s: %q", fwd, body)
	}
	return strings.Fields(r.stdout)[1]
}

// startServe runs 'cloudlet serve' on a free loopback port until the test ends (then SIGTERM,
// which must end it cleanly, and the sessions it runs with it), and returns its address and
// its stderr.
func startServe(t *testing.T, home string, args ...string) (string, *bytes.Buffer) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testguest.FreePort(t))
	// Not bound to ctx: the test's context ends before its cleanups run, and the server must
	// get its SIGTERM, not a kill.
	srv := exec.Command(cloudletBin, append([]string{"serve", "--listen", addr, "--stop-sessions-on-exit"}, args...)...)
	srv.Env = append(os.Environ(), "CLOUDLET_HOME="+home)
	serr := &bytes.Buffer{}
	srv.Stderr = serr
	out, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Signal(syscall.SIGTERM)
		stuck := time.AfterFunc(30*time.Second, func() { srv.Process.Kill() })
		defer stuck.Stop()
		if err := srv.Wait(); err != nil {
			t.Errorf("serve after SIGTERM: %v\n%s", err, serr.String())
		}
	})
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || !strings.Contains(line, "serving on") {
		t.Fatalf("serve: %q %v\n%s", line, err, serr.String())
	}
	return addr, serr
}

// alive reports whether pid runs (a zombie no longer does).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// testIndexStalls: QEMU starts beside the index's fetch, on a mount whose reads wait for the
// index, so it is up while the index has not come; a session stopped there takes QEMU and the
// mount with it.
func testIndexStalls(t *testing.T, ctx context.Context, home, id string, data []byte) {
	s := origin.NewShapedServer(data)
	defer s.Close()
	s.StallNext(1000) // every answer hangs after its headers
	port := testguest.FreePort(t)
	cmd := exec.CommandContext(ctx, cloudletBin, "synthesis", id, s.URL(),
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", port), "--probe", fmt.Sprintf("http://127.0.0.1:%d/", port))
	cmd.Env = append(os.Environ(), "CLOUDLET_HOME="+home)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	qemu, mountDir := waitQEMUChild(t, cmd.Process.Pid)
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done // the output is complete, and ours to read, once Wait has returned
		t.Fatalf("synthesis did not stop within 30 s of SIGINT\n%s", stderr.String())
	}
	// Read only now: the command's output is written by exec's goroutines until Wait returns.
	if strings.Contains(stdout.String(), "index") {
		t.Fatalf("the index came from a server whose answers all hang:\n%s", stdout.String())
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", qemu)); err == nil {
		t.Fatalf("QEMU (pid %d) is left after its session stopped", qemu)
	}
	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err != nil || strings.Contains(string(mounts), " "+mountDir+" ") {
		t.Fatalf("the session's mount %s is left after it stopped (%v)", mountDir, err)
	}
}

// waitQEMUChild waits up to a minute for a QEMU child of pid, and returns its pid and the
// cloudletfs mount its disk is on.
func waitQEMUChild(t *testing.T, pid int) (int, string) {
	t.Helper()
	disk := regexp.MustCompile(`file=([^,]+)/disk/image`)
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		out, _ := exec.Command("pgrep", "-P", strconv.Itoa(pid), "qemu-system").Output()
		fields := strings.Fields(string(out))
		if len(fields) == 0 {
			continue
		}
		qemu, _ := strconv.Atoi(fields[0])
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", qemu))
		if m := disk.FindSubmatch(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})); m != nil {
			return qemu, string(m[1])
		}
	}
	t.Fatal("no QEMU with its disk on a mount a minute into a synthesis whose index has not come")
	return 0, ""
}
