package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// openFiles counts this process's open file descriptors.
func openFiles(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestServerNoLeaks: failing creates of every kind leave no goroutine, no open file and no
// draft behind.
func TestServerNoLeaks(t *testing.T) {
	ts := newTestServer(t, ServerOptions{MaxSessions: 2, UploadIdle: 2 * time.Second,
		HTTP: origin.HTTPOptions{RetryFor: 100 * time.Millisecond, AttemptTimeout: time.Second}})
	junk := make([]byte, 64<<10)
	rand.New(rand.NewSource(1)).Read(junk)
	corrupt := origin.NewShapedServer(junk)
	defer corrupt.Close()
	noRanges := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("a server that ignores Range"))
	}))
	defer noRanges.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL + "/gone.overlay"
	closed.Close()

	failures := []struct {
		name string
		make func(t *testing.T) string // returns the session ID, or "" if none was made
	}{
		{"unknown base", func(t *testing.T) string {
			if code, _, body := ts.create(t, SessionRequest{Base: strings.Repeat("0", 64), URL: corrupt.URL()}); code != 404 {
				t.Fatalf("unknown base: %d %s", code, body)
			}
			return ""
		}},
		{"unreachable URL", func(t *testing.T) string { return ts.mustCreate(t, SessionRequest{URL: closedURL}) }},
		{"no range support", func(t *testing.T) string { return ts.mustCreate(t, SessionRequest{URL: noRanges.URL + "/x"}) }},
		{"corrupt overlay", func(t *testing.T) string { return ts.mustCreate(t, SessionRequest{URL: corrupt.URL()}) }},
		{"upload breaks off", func(t *testing.T) string { return ts.brokenUpload(t) }},
	}
	run := func(rounds int) {
		for range rounds {
			for _, f := range failures {
				if id := f.make(t); id != "" {
					if st := ts.waitState(t, id, 30*time.Second); st.State != "failed" {
						t.Fatalf("%s: got %+v, want a failed session", f.name, st)
					}
				}
			}
		}
	}
	run(1) // warm up: pools and lazily started goroutines count in the baseline
	settle()
	goroutines, files := runtime.NumGoroutine(), openFiles(t)
	run(50) // 250 failing creates
	checkBaseline(t, goroutines, files)
	if drafts, _ := os.ReadDir(filepath.Join(ts.opts.Store.Home(), "tmp")); len(drafts) != 0 {
		t.Fatalf("%d drafts left behind", len(drafts))
	}
}

// checkBaseline waits a while for the goroutine and open file counts to come back to their
// baselines (give or take a few), and fails with every goroutine's stack if they do not.
func checkBaseline(t *testing.T, goroutines, files int) {
	t.Helper()
	const slack = 5
	deadline := time.Now().Add(10 * time.Second)
	for {
		settle()
		g, f := runtime.NumGoroutine(), openFiles(t)
		if g <= goroutines+slack && f <= files+slack {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("after the failing creates: %d goroutines (baseline %d), %d open files (baseline %d)\n%s", g, goroutines, f, files, buf)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// settle lets finished goroutines exit and closed connections go.
func settle() {
	http.DefaultClient.CloseIdleConnections()
	runtime.GC()
	time.Sleep(50 * time.Millisecond)
}

// mustCreate creates a session and returns its ID.
func (ts *testServer) mustCreate(t *testing.T, req SessionRequest) string {
	t.Helper()
	code, st, body := ts.create(t, req)
	if code != http.StatusCreated {
		t.Fatalf("create %+v: %d %s", req, code, body)
	}
	return st.ID
}

// brokenUpload starts an upload, sends part of it, and drops the connection; it returns the
// session's ID.
func (ts *testServer) brokenUpload(t *testing.T) string {
	t.Helper()
	u, _ := url.Parse(ts.URL)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/sessions?base=%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer "+testToken+"\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n", ts.Base.ID, u.Host)
	c.Write(bytes.Repeat([]byte("x"), 1000))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	var st SessionStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); resp.StatusCode != http.StatusCreated || err != nil {
		t.Fatalf("upload: %s, %v", resp.Status, err)
	}
	return st.ID
}

// TestServerNoLeaksAfterMount: sessions that fail once their images are mounted (a corrupt
// blob, found by the fetch before the VM starts) leave nothing behind either: no mount, no
// fetcher, no cache, no open file.
func TestServerNoLeaksAfterMount(t *testing.T) {
	testguest.RequireFUSE(t)
	ts := newTestServer(t, ServerOptions{MaxSessions: 2})
	src := origin.NewShapedServer(testOverlay(t, ts.Base, true))
	defer src.Close()
	fail := func() {
		id := ts.mustCreate(t, SessionRequest{URL: src.URL(), NoEarly: true})
		if st := ts.waitState(t, id, 30*time.Second); st.State != "failed" || !strings.Contains(st.Error, "fetch overlay") || !strings.Contains(st.Error, "digest") {
			t.Fatalf("got %+v, want a session failed on a blob's digest", st)
		}
	}
	fail() // warm up
	settle()
	goroutines, files := runtime.NumGoroutine(), openFiles(t)
	for range 30 {
		fail()
	}
	checkBaseline(t, goroutines, files)
	if mounts, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(ts.opts.Store.Home())); len(mounts) > 0 {
		t.Fatalf("a mount is left under the store: %s", mounts[0].Mountpoint)
	}
}
