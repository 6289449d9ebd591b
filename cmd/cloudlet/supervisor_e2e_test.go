package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/synthesis/api"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// testSessionsOutliveServer: a session runs in its supervisor, not in the server. The server
// is killed (SIGKILL) or stopped (SIGTERM) while the overlay streams at 10 Mbit/s; the guest
// keeps answering and the overlay completes; a new server adopts the session, shows its
// timeline and stops it, and nothing is left. A killed supervisor takes its QEMU with it.
func testSessionsOutliveServer(t *testing.T, ctx context.Context, home, id string) {
	t.Cleanup(func() { noQEMULeft(t, home) })
	data := bulkyOverlay(t, ctx, home, id)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) { testServerRestart(t, ctx, home, id, data, sig) })
	}
	t.Run("supervisor killed", func(t *testing.T) { testSupervisorKilled(t, ctx, home, id, data) })
}

func testServerRestart(t *testing.T, ctx context.Context, home, id string, data []byte, sig syscall.Signal) {
	src := shapedOrigin(data)
	defer src.Close()
	srv, addr, serr := spawnServe(t, home, "--allow-origin", "127.0.0.0/8")
	sid, fwd := startSession(t, ctx, home, addr, id, src.URL(), serr)
	dir := filepath.Join(home, "sessions", sid)
	waitEvent(t, ctx, dir, "resumed")
	sup, qemu := sessionProcs(t, sid)

	srv.Process.Signal(sig)
	midStream(t, src, len(data))
	err := srv.Wait()
	if sig == syscall.SIGTERM && err != nil {
		t.Fatalf("serve after SIGTERM: %v\n%s", err, serr)
	}
	if body := waitBody(t, ctx, "http://"+fwd+"/"); !strings.Contains(body, "custom-app") {
		t.Fatalf("the guest after the server's end answered %q", body)
	}
	waitEvent(t, ctx, dir, "complete")

	addr2, serr2 := startServe(t, home, "--allow-origin", "127.0.0.0/8")
	st := sessionStatus(t, ctx, home, addr2, sid)
	if st.State != "running" || !hasTimeline(st, "resumed", "first_answer", "complete") {
		t.Fatalf("the new server shows %+v, want it running with its timeline\n%s", st, serr2)
	}
	if !alive(sup) || !alive(qemu) {
		t.Fatalf("supervisor %d alive %v, QEMU %d alive %v", sup, alive(sup), qemu, alive(qemu))
	}
	if r := run(t, ctx, home, "client", "-s", addr2, "--stop", sid); r.code != 0 {
		t.Fatalf("client --stop: %s\n%s", r.stderr, serr2)
	}
	if st := sessionStatus(t, ctx, home, addr2, sid); st.State != "stopped" {
		t.Fatalf("after client --stop: %+v", st)
	}
	nothingLeft(t, dir, sup, qemu)
}

func testSupervisorKilled(t *testing.T, ctx context.Context, home, id string, data []byte) {
	src := shapedOrigin(data)
	defer src.Close()
	srv, addr, serr := spawnServe(t, home, "--allow-origin", "127.0.0.0/8")
	sid, _ := startSession(t, ctx, home, addr, id, src.URL(), serr)
	dir := filepath.Join(home, "sessions", sid)
	waitEvent(t, ctx, dir, "resumed")
	// Half-way through the stream: the cache then holds whole blobs that a re-run can skip.
	for src.Bytes.Load() < int64(len(data)/2) {
		time.Sleep(20 * time.Millisecond)
	}
	sup, qemu := sessionProcs(t, sid)
	if err := syscall.Kill(sup, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	midStream(t, src, len(data))
	killed := time.Now()
	for reapOrphans(); alive(qemu); reapOrphans() {
		if time.Since(killed) > 10*time.Second {
			t.Fatal("QEMU still runs 10 s after its supervisor was killed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("QEMU ended %v after its supervisor", time.Since(killed).Round(time.Millisecond))
	if st := waitSession(t, ctx, home, addr, sid); st.State != "failed" || !strings.Contains(st.Error, "supervisor exited") {
		t.Fatalf("session after its supervisor was killed: %+v", st)
	}
	srv.Process.Signal(syscall.SIGTERM)
	if err := srv.Wait(); err != nil {
		t.Fatalf("serve after SIGTERM: %v\n%s", err, serr)
	}
	addr2, _ := startServe(t, home)
	if st := sessionStatus(t, ctx, home, addr2, sid); st.State != "failed" || !strings.Contains(st.Error, "supervisor exited") {
		t.Fatalf("the new server shows %+v, want it failed", st)
	}
	nothingLeft(t, dir, sup, qemu)
	rerunOnCache(t, ctx, home, id, data, filepath.Join(dir, "cache"))
}

// rerunOnCache synthesises the overlay again on the cache a killed supervisor left: it
// fetches only what the cache lacks, and the cache ends up equal to 'overlay apply'.
func rerunOnCache(t *testing.T, ctx context.Context, home, id string, data []byte, cache string) {
	t.Helper()
	dir := t.TempDir()
	file, applied := filepath.Join(dir, "bulky.overlay"), filepath.Join(dir, "applied")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := run(t, ctx, home, "overlay", "apply", file, "--base", id, "--out", applied); r.code != 0 {
		t.Fatalf("overlay apply: %s", r.stderr)
	}
	src := origin.NewShapedServer(data)
	defer src.Close()
	port := testguest.FreePort(t)
	r := run(t, ctx, home, "synthesis", id, src.URL(), "--cache", cache,
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", port), "--probe", fmt.Sprintf("http://127.0.0.1:%d/", port),
		"--probe-timeout", "2m", "--exit-when-complete")
	if r.code != 0 || !strings.Contains(r.stdout, "complete") {
		t.Fatalf("re-run on the killed session's cache: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	fetched := src.Bytes.Load()
	t.Logf("the re-run fetched %d of %d bytes", fetched, len(data))
	// Less than the whole overlay, not much less: blobs are fetched whole (one whose chunks the
	// VM wrote since is fetched again), and a range request delivers its blobs only once it is
	// complete, so what was in flight at the kill is lost.
	if fetched >= int64(len(data)) {
		t.Fatalf("the re-run fetched %d bytes of an overlay of %d: nothing of the cache was reused", fetched, len(data))
	}
	checkCache(t, cache, applied, filepath.Join(home, "bases", id))
}

// bulkySize is how much the guest writes in bulkyOverlay: stored once (its pages in the page
// cache are references to its disk chunks), about 5.4 MB of overlay, 4 seconds at 10 Mbit/s.
const bulkySize = "5000000"

// bulkyOverlay is the test app overlay with a file of random bytes besides: big enough to
// stream for seconds after the VM resumed.
func bulkyOverlay(t *testing.T, ctx context.Context, home, id string) []byte {
	t.Helper()
	file := filepath.Join(t.TempDir(), "bulky.overlay")
	p8080 := testguest.FreePort(t)
	r := run(t, ctx, home, "overlay", "create", id,
		"--exec", "mkdir -p /www2 && echo custom-app > /www2/index.html",
		"--exec", "head -c "+bulkySize+" /dev/urandom > /bulk && sync",
		"--exec", "httpd -p 8080 -h /www2",
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", p8080), "--ready", fmt.Sprintf("http://127.0.0.1:%d/", p8080),
		"-o", file)
	if r.code != 0 {
		t.Fatalf("overlay create: exit %d\n%s", r.code, r.stderr)
	}
	return mustRead(t, file)
}

// midStream fails unless the origin is still sending the overlay.
func midStream(t *testing.T, src *origin.ShapedServer, size int) {
	t.Helper()
	sent := src.Bytes.Load()
	if sent >= int64(size) {
		t.Fatalf("the whole overlay (%d bytes) was sent already: the test must act while it streams", size)
	}
	t.Logf("%d of %d bytes sent", sent, size)
}

// shapedOrigin serves the overlay at 10 Mbit/s, so that it still streams while the test acts.
func shapedOrigin(data []byte) *origin.ShapedServer {
	s := origin.NewShapedServer(data)
	s.Shape(10*time.Millisecond, 10e6/8)
	return s
}

// spawnServe runs 'cloudlet serve' for a test that ends it itself; the test's end kills it if
// it still runs, and stops the sessions it left.
func spawnServe(t *testing.T, home string, args ...string) (*exec.Cmd, string, *bytes.Buffer) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testguest.FreePort(t))
	srv := exec.Command(cloudletBin, append([]string{"serve", "--listen", addr}, args...)...)
	srv.Env = append(os.Environ(), "CLOUDLET_HOME="+home)
	serr := &bytes.Buffer{}
	srv.Stderr = serr
	out, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if srv.ProcessState == nil {
			srv.Process.Kill()
			srv.Wait()
		}
	})
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || !strings.Contains(line, "serving on") {
		t.Fatalf("serve: %q %v\n%s", line, err, serr.String())
	}
	return srv, addr, serr
}

// startSession asks the server for a session of the app overlay at url, and returns its ID
// and the host address of the app's port. It does not wait for the session to be complete.
func startSession(t *testing.T, ctx context.Context, home, addr, id, url string, serr *bytes.Buffer) (string, string) {
	t.Helper()
	cl := &api.Client{Server: "http://" + addr, Token: serverToken(t, home)}
	st, err := cl.Create(ctx, api.SessionRequest{Base: id, URL: url, Ports: []int{8080}, ProbePort: 8080, ProbePath: "/"}, nil, 0)
	if err != nil {
		t.Fatalf("create session: %v\n%s", err, serr)
	}
	t.Cleanup(func() { stopLeftover(home, st.ID) })
	return st.ID, st.Forwards["8080"]
}

// stopLeftover ends a session's supervisor if a failed test left it running.
func stopLeftover(home, sid string) {
	out, _ := exec.Command("pgrep", "-f", "session-supervisor --dir "+filepath.Join(home, "sessions", sid)).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}
}

// sessionProcs are the PIDs of the session's supervisor and of its QEMU (its child, through
// the launcher's exec).
func sessionProcs(t *testing.T, sid string) (sup, qemu int) {
	t.Helper()
	out, _ := exec.Command("pgrep", "-f", "session-supervisor --dir .*"+sid).Output()
	sup, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("no single supervisor of session %s: %q", sid, out)
	}
	out, _ = exec.Command("pgrep", "-P", strconv.Itoa(sup), "-f", "qemu-system").Output()
	if qemu, err = strconv.Atoi(strings.TrimSpace(string(out))); err != nil {
		t.Fatalf("no single QEMU under supervisor %d: %q", sup, out)
	}
	return sup, qemu
}

// nothingLeft fails if the session in dir left its supervisor, its QEMU or its mount.
func nothingLeft(t *testing.T, dir string, sup, qemu int) {
	t.Helper()
	mounts := []string{filepath.Join(dir, "mnt")}
	if b, err := os.ReadFile(filepath.Join(dir, "mountpoint")); err == nil {
		mounts = append(mounts, string(b)) // QEMU as another user: in cloudletfs's run directory
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		reapOrphans()
		mounted := ""
		for _, m := range mounts {
			if ok, _ := mountinfo.Mounted(m); ok {
				mounted = m
			}
		}
		if !alive(sup) && !alive(qemu) && mounted == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left after session %s: supervisor %v, QEMU %v, mount %q", filepath.Base(dir), alive(sup), alive(qemu), mounted)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitEvent waits until the session's timeline file records the event.
func waitEvent(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	for !hasEvent(t, dir, name) {
		select {
		case <-ctx.Done():
			b, _ := os.ReadFile(filepath.Join(dir, "supervisor.log"))
			t.Fatalf("no %q in the timeline of %s\n%s", name, dir, b)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func hasEvent(t *testing.T, dir, name string) bool {
	b, _ := os.ReadFile(filepath.Join(dir, "timeline.jsonl"))
	return bytes.Contains(b, []byte(`"event":"`+name+`"`))
}

func hasTimeline(st api.SessionStatus, names ...string) bool {
	seen := map[string]bool{}
	for _, e := range st.Timeline {
		seen[e.Name] = true
	}
	for _, n := range names {
		if !seen[n] {
			return false
		}
	}
	return true
}

// sessionStatus is the server's GET /v1/sessions/ID.
func sessionStatus(t *testing.T, ctx context.Context, home, addr, sid string) api.SessionStatus {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/v1/sessions/"+sid, nil)
	req.Header.Set("Authorization", "Bearer "+serverToken(t, home))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st api.SessionStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("GET session %s: %d: %v", sid, resp.StatusCode, err)
	}
	return st
}
