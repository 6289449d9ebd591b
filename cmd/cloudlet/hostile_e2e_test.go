package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/synthesis/api"
)

// TestServeHostileInput throws what strangers send at a running 'cloudlet serve': overlays
// that lie about their sizes, junk, an xz bomb, a redirect into the host's loopback, too many
// ports, a burst of creates past the limit, a silent upload, requests without a token. Each
// gets a clear error, the server goes on serving, and its memory stays low. None of it needs
// a VM: every one of these is refused before a guest would run.
func TestServeHostileInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	home := t.TempDir()
	b := syntheticBase(t, home)
	origins := newHostileOrigins(t, b)
	const idle = 2 * time.Second
	srv := startHostileServe(t, home, "--max-sessions", "1", "--allow-origin", "127.0.0.2/32",
		"--upload-idle", idle.String())

	// failedWith creates a session from url and waits for it to fail with want in its error.
	failedWith := func(t *testing.T, url string, want ...string) {
		t.Helper()
		id := srv.mustCreate(t, ctx, b.ID, url)
		st := srv.waitEnded(t, ctx, id)
		for _, w := range want {
			if st.State != "failed" || !strings.Contains(st.Error, w) {
				t.Fatalf("got %s %q, want failed with %q", st.State, st.Error, w)
			}
		}
		t.Logf("%s", st.Error)
	}
	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"sparse overlay claiming a 2 TiB index", func(t *testing.T) {
			failedWith(t, origins.url("/sparse.overlay"), "over this server's limit")
		}},
		{"upload claiming 2 TiB", func(t *testing.T) {
			code, body := srv.upload(t, b.ID, 2<<40, []byte("CLOUDOVL"))
			if code != http.StatusRequestEntityTooLarge {
				t.Fatalf("got %d %s, want 413", code, body)
			}
		}},
		{"random junk", func(t *testing.T) { failedWith(t, origins.url("/junk.overlay"), "not an overlay") }},
		{"empty file", func(t *testing.T) { failedWith(t, origins.url("/empty.overlay"), "no range support") }},
		{"empty upload", func(t *testing.T) {
			if code, body := srv.upload(t, b.ID, 0, nil); code != http.StatusLengthRequired {
				t.Fatalf("got %d %s, want 411", code, body)
			}
		}},
		{"xz bomb", func(t *testing.T) { failedWith(t, origins.url("/bomb.overlay"), "dictionary") }},
		{"redirect to the host's loopback", func(t *testing.T) {
			failedWith(t, origins.url("/redirect"), "refused")
		}},
		{"3000 ports", func(t *testing.T) {
			ports := make([]int, 3000)
			for i := range ports {
				ports[i] = i + 1
			}
			req, _ := json.Marshal(api.SessionRequest{Base: b.ID, URL: origins.url("/junk.overlay"), Ports: ports})
			if code, body := srv.call(t, "POST", "/v1/sessions", req, srv.token); code != http.StatusBadRequest || !strings.Contains(body, "at most 16") {
				t.Fatalf("got %d %s, want 400 saying at most 16", code, body)
			}
		}},
		{"20 concurrent creates past a limit of 1", func(t *testing.T) {
			for round := range 3 {
				srv.burst(t, ctx, b.ID, origins.url("/slow"), round)
			}
		}},
		{"silent upload", func(t *testing.T) {
			id := srv.silentUpload(t, b.ID)
			if st := srv.waitEnded(t, ctx, id); st.State != "failed" || !strings.Contains(st.Error, "no upload data") {
				t.Fatalf("got %s %q, want failed saying no upload data came", st.State, st.Error)
			}
			// Its slot is free again.
			failedWith(t, origins.url("/junk.overlay"), "not an overlay")
		}},
		{"no token", func(t *testing.T) {
			for _, r := range []struct{ method, path string }{{"GET", "/v1/bases"}, {"GET", "/v1/sessions"}, {"POST", "/v1/sessions"}} {
				if code, body := srv.call(t, r.method, r.path, []byte(`{}`), ""); code != http.StatusUnauthorized {
					t.Fatalf("%s %s without a token: got %d %s, want 401", r.method, r.path, code, body)
				}
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.run(t)
			if code, body := srv.call(t, "GET", "/v1/bases", nil, srv.token); code != http.StatusOK || !strings.Contains(body, b.ID) {
				t.Fatalf("GET /v1/bases after the case: %d %s\nserver: %s", code, body, srv.stderr.String())
			}
		})
	}
	// With the size limit raised past the claim, the overlay reader is what must hold.
	t.Run("sparse overlay past a raised --max-overlay", func(t *testing.T) {
		raised := startHostileServe(t, home, "--allow-origin", "127.0.0.2/32", "--max-overlay", "1024G")
		id := raised.mustCreate(t, ctx, b.ID, origins.url("/sparse-900g.overlay"))
		if st := raised.waitEnded(t, ctx, id); st.State != "failed" || !strings.Contains(st.Error, "index") {
			t.Fatalf("got %s %q, want failed naming the index", st.State, st.Error)
		} else {
			t.Logf("%s", st.Error)
		}
		raised.checkMemory(t)
	})
	srv.checkMemory(t)
}

// checkMemory fails if the server's peak resident memory reached 1 GiB.
func (s *hostileServe) checkMemory(t *testing.T) {
	t.Helper()
	if hwm := peakMemory(t, s.cmd.Process.Pid); hwm >= 1<<30 {
		t.Fatalf("the server's peak memory was %d MiB, want under 1 GiB", hwm>>20)
	} else {
		t.Logf("the server's peak memory: %d MiB", hwm>>20)
	}
}

// syntheticBase commits a small base into home's store: real files and manifest, a kernel
// that is never booted.
func syntheticBase(t *testing.T, home string) *base.Base {
	t.Helper()
	store, err := base.Open(home)
	if err != nil {
		t.Fatal(err)
	}
	d, err := store.NewDraft()
	if err != nil {
		t.Fatal(err)
	}
	cfg := base.Manifest{Name: "hostile", Accel: "tcg"}
	cfg.VM = defaultVMConfig()
	files := map[string][]byte{base.DiskFile: make([]byte, 1<<20), base.MemoryFile: make([]byte, cfg.VM.MemoryBytes),
		base.DevstateFile: []byte("devstate"), base.KernelFile: []byte("kernel")}
	for name, data := range files {
		if err := os.WriteFile(d.Path(name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := d.Commit(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// peakMemory is a process's peak resident set (VmHWM), in bytes.
func peakMemory(t *testing.T, pid int) int64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// hostileOrigins serves the hostile overlays from 127.0.0.2, the one range the server allows;
// its redirect points into 127.0.0.1, which the server must refuse.
type hostileOrigins struct {
	*httptest.Server
	files map[string]func() (io.ReadSeeker, error)
}

func (o *hostileOrigins) url(path string) string { return o.URL + path }

func newHostileOrigins(t *testing.T, b *base.Base) *hostileOrigins {
	t.Helper()
	dir := t.TempDir()
	// 96-byte headers whose index claims 2 TiB (over any --max-overlay) or 900 GiB, at the
	// start of sparse files that long.
	sparse := sparseClaim(t, dir, 2<<40)
	sparse900 := sparseClaim(t, dir, 900<<30)
	junk := make([]byte, 256<<10)
	rand.Read(junk)
	bomb := xzBombOverlay(t, b)
	bytesOf := func(p []byte) func() (io.ReadSeeker, error) {
		return func() (io.ReadSeeker, error) { return bytes.NewReader(p), nil }
	}
	o := &hostileOrigins{files: map[string]func() (io.ReadSeeker, error){
		"/sparse.overlay":      func() (io.ReadSeeker, error) { return os.Open(sparse) },
		"/sparse-900g.overlay": func() (io.ReadSeeker, error) { return os.Open(sparse900) },
		"/junk.overlay":        bytesOf(junk),
		"/empty.overlay":       bytesOf(nil),
		"/bomb.overlay":        bytesOf(bomb),
	}}
	// What the redirect points to: a service on the host's loopback.
	private := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("SECRET-BANNER"))
	}))
	t.Cleanup(private.Close)
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	o.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/redirect":
			http.Redirect(w, r, private.URL+"/admin", http.StatusFound)
			return
		case "/slow": // holds a session in its size probe until the session is stopped
			select {
			case <-r.Context().Done():
			case <-time.After(time.Minute):
			}
			return
		}
		open, ok := o.files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		f, err := open()
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		if c, ok := f.(io.Closer); ok {
			defer c.Close()
		}
		http.ServeContent(w, r, "overlay", time.Unix(0, 0), f)
	}))
	o.Server.Listener.Close()
	o.Server.Listener = l
	o.Server.Start()
	t.Cleanup(o.Server.Close)
	return o
}

// sparseClaim makes a sparse overlay file whose header claims an index of indexLen bytes,
// and which is that long.
func sparseClaim(t *testing.T, dir string, indexLen int64) string {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprintf("sparse-%d.overlay", indexLen))
	if err := os.WriteFile(path, claimHeader(indexLen), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, indexLen+96); err != nil {
		t.Fatal(err)
	}
	return path
}

// hostileServe is a running 'cloudlet serve' and what it takes to talk to it.
type hostileServe struct {
	cmd    *exec.Cmd
	addr   string
	token  string
	stderr *bytes.Buffer
}

// startHostileServe runs 'cloudlet serve' with a token file until the test ends (then
// SIGTERM, which must end it cleanly).
func startHostileServe(t *testing.T, home string, args ...string) *hostileServe {
	t.Helper()
	s := &hostileServe{token: "hostile-test-token", stderr: &bytes.Buffer{}}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(s.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.addr = fmt.Sprintf("127.0.0.1:%d", testguest.FreePort(t))
	s.cmd = exec.Command(cloudletBin, append([]string{"serve", "--listen", s.addr, "--token-file", tokenFile}, args...)...)
	s.cmd.Env = append(os.Environ(), "CLOUDLET_HOME="+home)
	s.cmd.Stderr = s.stderr
	out, _ := s.cmd.StdoutPipe()
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		stuck := time.AfterFunc(30*time.Second, func() { s.cmd.Process.Kill() })
		defer stuck.Stop()
		if err := s.cmd.Wait(); err != nil {
			t.Errorf("serve after SIGTERM: %v\n%s", err, s.stderr.String())
		}
	})
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || !strings.Contains(line, "serving on") {
		t.Fatalf("serve: %q %v\n%s", line, err, s.stderr.String())
	}
	return s
}

// call sends a request (JSON body, if any) with token, if any, and returns status and body.
func (s *hostileServe) call(t *testing.T, method, path string, body []byte, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.addr+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v\nserver: %s", method, path, err, s.stderr.String())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

func (s *hostileServe) create(t *testing.T, baseID, url string) (int, api.SessionStatus, string) {
	t.Helper()
	req, _ := json.Marshal(api.SessionRequest{Base: baseID, URL: url})
	code, body := s.call(t, "POST", "/v1/sessions", req, s.token)
	var st api.SessionStatus
	if code == http.StatusCreated {
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("create answer %s: %v", body, err)
		}
	}
	return code, st, body
}

func (s *hostileServe) mustCreate(t *testing.T, ctx context.Context, baseID, url string) string {
	t.Helper()
	code, st, body := s.create(t, baseID, url)
	if code != http.StatusCreated {
		t.Fatalf("create from %s: got %d %s, want 201", url, code, body)
	}
	return st.ID
}

// waitEnded polls a session until it is no longer running.
func (s *hostileServe) waitEnded(t *testing.T, ctx context.Context, id string) api.SessionStatus {
	t.Helper()
	for {
		code, body := s.call(t, "GET", "/v1/sessions/"+id, nil, s.token)
		if code != http.StatusOK {
			t.Fatalf("GET session %s: %d %s", id, code, body)
		}
		var st api.SessionStatus
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatal(err)
		}
		if st.State != "running" {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("session %s still running: %v", id, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// burst sends 20 creates at once: exactly one may start, as the limit is one; it is then
// stopped.
func (s *hostileServe) burst(t *testing.T, ctx context.Context, baseID, url string, round int) {
	t.Helper()
	codes := make([]int, 20)
	ids := make([]string, 20)
	errs := make([]error, 20)
	body, _ := json.Marshal(api.SessionRequest{Base: baseID, URL: url})
	var wg sync.WaitGroup
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+s.addr+"/v1/sessions", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+s.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			var st api.SessionStatus
			json.NewDecoder(resp.Body).Decode(&st)
			codes[i], ids[i] = resp.StatusCode, st.ID
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	created := 0
	for i, c := range codes {
		switch c {
		case http.StatusCreated:
			created++
			if code, body := s.call(t, "DELETE", "/v1/sessions/"+ids[i], nil, s.token); code != http.StatusNoContent {
				t.Fatalf("DELETE %s: %d %s", ids[i], code, body)
			}
		case http.StatusTooManyRequests:
		default:
			t.Fatalf("round %d: a create got %d, want 201 or 429", round, c)
		}
	}
	if created != 1 {
		t.Fatalf("round %d: %d sessions created against a limit of 1 (codes %v)", round, created, codes)
	}
}

// upload sends the head of an upload that claims size bytes, and returns the answer.
func (s *hostileServe) upload(t *testing.T, baseID string, size int64, head []byte) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/sessions?base=%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", baseID, s.addr, s.token, size)
	c.Write(head)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("upload: %v\nserver: %s", err, s.stderr.String())
	}
	defer resp.Body.Close()
	var e struct {
		ID    string `json:"id"`
		Error string `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.ID + e.Error
}

// silentUpload starts an upload, sends a few bytes and then nothing; the connection stays
// open. It returns the session's ID.
func (s *hostileServe) silentUpload(t *testing.T, baseID string) string {
	t.Helper()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST /v1/sessions?base=%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\nCLOUDOVL", baseID, s.addr, s.token)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("silent upload: %v\nserver: %s", err, s.stderr.String())
	}
	var st api.SessionStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); resp.StatusCode != http.StatusCreated || err != nil {
		t.Fatalf("silent upload: %s, %v", resp.Status, err)
	}
	return st.ID
}
