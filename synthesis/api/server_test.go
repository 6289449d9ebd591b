package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// TestServerSlotsAtomic: concurrent creates against a limit of one get exactly one session;
// a count taken under one lock and a reservation taken under another let two through. Each
// request asks for forwards, which widens the window between the two.
func TestServerSlotsAtomic(t *testing.T) {
	ts := newTestServer(t, ServerOptions{MaxSessions: 1, run: runUntilStopped})
	for round := range 20 {
		codes := make([]int, 20)
		errs := make([]error, 20)
		body, _ := json.Marshal(SessionRequest{Base: ts.Base.ID, URL: "http://127.0.0.1:9/app.overlay", Ports: []int{80, 443, 8080, 8443}})
		var wg sync.WaitGroup
		for i := range codes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				codes[i], _, errs[i] = ts.try("POST", "/v1/sessions", "application/json", bytes.NewReader(body))
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		created, busy := 0, 0
		for _, c := range codes {
			switch c {
			case http.StatusCreated:
				created++
			case http.StatusTooManyRequests:
				busy++
			}
		}
		if created != 1 || busy != 19 {
			t.Fatalf("round %d: %d created, %d refused with 429, want 1 and 19 (codes %v)", round, created, busy, codes)
		}
		ts.stopAll(t)
	}
}

// stopAll deletes every session.
func (ts *testServer) stopAll(t *testing.T) {
	t.Helper()
	ts.mu.Lock()
	var ids []string
	for id := range ts.sessions {
		ids = append(ids, id)
	}
	ts.mu.Unlock()
	for _, id := range ids {
		if code, b := ts.do(t, "DELETE", "/v1/sessions/"+id, "", nil); code != http.StatusNoContent && code != http.StatusNotFound {
			t.Fatalf("DELETE %s: %d %s", id, code, b)
		}
	}
}

func TestServerPorts(t *testing.T) {
	ts := newTestServer(t, ServerOptions{MaxSessions: 100, run: runUntilStopped})
	seq := func(from, n int) []int {
		var p []int
		for i := range n {
			p = append(p, from+i)
		}
		return p
	}
	for _, c := range []struct {
		name  string
		req   SessionRequest
		code  int
		error string
	}{
		{"none", SessionRequest{}, 201, ""},
		{"the most", SessionRequest{Ports: seq(8000, MaxForwards), ProbePort: 8003}, 201, ""},
		{"one too many", SessionRequest{Ports: seq(8000, MaxForwards+1)}, 400, "at most 16"},
		{"3000", SessionRequest{Ports: seq(1, 3000)}, 400, "at most 16"},
		{"zero", SessionRequest{Ports: []int{0}}, 400, "port 0"},
		{"negative", SessionRequest{Ports: []int{-1}}, 400, "port -1"},
		{"too high", SessionRequest{Ports: []int{65536}}, 400, "port 65536"},
		{"twice", SessionRequest{Ports: []int{80, 443, 80}}, 400, "twice"},
		{"probe not forwarded", SessionRequest{Ports: []int{80}, ProbePort: 81}, 400, "probe port 81"},
		{"probe too high", SessionRequest{Ports: []int{80}, ProbePort: 70000}, 400, "port 70000"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, st, body := ts.create(t, c.req)
			if code != c.code || !strings.Contains(body, c.error) {
				t.Fatalf("got %d %s, want %d with %q", code, body, c.code, c.error)
			}
			if code == 201 && len(st.Forwards) != len(c.req.Ports) {
				t.Fatalf("got %d forwards, want %d", len(st.Forwards), len(c.req.Ports))
			}
		})
	}
	ts.mu.Lock()
	n := len(ts.sessions)
	ts.mu.Unlock()
	if n != 2 {
		t.Fatalf("got %d sessions after the refused requests, want 2", n)
	}
}

// TestServerPrunesEndedSessions: failed and stopped sessions go away after PruneAfter.
func TestServerPrunesEndedSessions(t *testing.T) {
	ts := newTestServer(t, ServerOptions{MaxSessions: 4, PruneAfter: time.Second, run: runFails})
	code, st, body := ts.create(t, SessionRequest{})
	if code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	if got := ts.waitState(t, st.ID, 5*time.Second); got.State != "failed" || !strings.Contains(got.Error, "stand-in failure") {
		t.Fatalf("got %+v, want a failed session", got)
	}
	time.Sleep(1200 * time.Millisecond)
	if _, ok := ts.status(t, st.ID); ok {
		t.Fatal("an ended session is still there after PruneAfter")
	}
	if _, b := ts.do(t, "GET", "/v1/sessions", "", nil); strings.Contains(string(b), st.ID) {
		t.Fatalf("the session list still has the ended session: %s", b)
	}
}

// TestServerSurvivesPanic: a panic in a session fails that session, with the panic in its
// error and the stack in the log; the server goes on serving.
func TestServerSurvivesPanic(t *testing.T) {
	ts := newTestServer(t, ServerOptions{MaxSessions: 1, run: func(ctx context.Context, o synthesis.Options) (synthesis.Timeline, error) {
		var m map[string]int
		m["boom"]++ // a nil map write: a runtime panic, as a bug would make
		return nil, nil
	}})
	for range 2 { // the slot is freed: a second session is allowed
		code, st, body := ts.create(t, SessionRequest{})
		if code != 201 {
			t.Fatalf("create: %d %s", code, body)
		}
		got := ts.waitState(t, st.ID, 5*time.Second)
		if got.State != "failed" || !strings.Contains(got.Error, "panic") || !strings.Contains(got.Error, "nil map") {
			t.Fatalf("got %+v, want a failed session naming the panic", got)
		}
	}
	if !strings.Contains(ts.Log.String(), "goroutine ") || !strings.Contains(ts.Log.String(), "server_test.go") {
		t.Fatalf("the log has no stack of the panic:\n%s", ts.Log.String())
	}
	ts.basesAnswer(t)
}

// TestServerMaxOverlay: an origin that claims more than MaxOverlay is refused before a byte of
// it is read, whether uploaded or behind a URL.
func TestServerMaxOverlay(t *testing.T) {
	const claim = 2 << 40
	var mu sync.Mutex
	var ranges []string
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ranges = append(ranges, r.Header.Get("Range"))
		mu.Unlock()
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-0/%d", int64(claim)))
		w.WriteHeader(http.StatusPartialContent)
		w.Write([]byte{'C'})
	}))
	defer upstream.Close()
	ts := newTestServer(t, ServerOptions{MaxSessions: 2, MaxOverlay: 1 << 20, HTTP: origin.HTTPOptions{RetryFor: time.Second}})

	code, st, body := ts.create(t, SessionRequest{URL: upstream.URL + "/big.overlay"})
	if code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	got := ts.waitState(t, st.ID, 10*time.Second)
	if got.State != "failed" || !strings.Contains(got.Error, fmt.Sprint(int64(claim))) || !strings.Contains(got.Error, "limit") {
		t.Fatalf("got %+v, want a failed session naming the claimed size and the limit", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ranges) != 1 || ranges[0] != "bytes=0-16383" {
		t.Fatalf("the origin was asked for %q, want only the size probe", ranges)
	}

	req, _ := http.NewRequest("POST", ts.URL+"/v1/sessions?base="+ts.Base.ID, strings.NewReader(strings.Repeat("x", 2<<20)))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("an upload over the limit: got %s, want 413", resp.Status)
	}
}

// TestPruneKeepsBoundedEnded: however fast sessions fail, at most maxEnded ended ones are
// kept, the newest; running ones are never pruned.
func TestPruneKeepsBoundedEnded(t *testing.T) {
	s := NewServer(context.Background(), ServerOptions{})
	now := time.Now()
	s.sessions["running"] = &session{status: SessionStatus{ID: "running", State: "running"}}
	for i := range maxEnded + 1 {
		id := fmt.Sprint(i)
		s.sessions[id] = &session{status: SessionStatus{ID: id, State: "failed"}, ended: now.Add(time.Duration(i) * time.Millisecond)}
	}
	s.pruneLocked(now.Add(time.Second))
	if len(s.sessions) != maxEnded+1 || s.sessions["0"] != nil || s.sessions["running"] == nil {
		t.Fatalf("got %d sessions (oldest kept: %v), want %d without the oldest", len(s.sessions), s.sessions["0"] != nil, maxEnded+1)
	}
	s.pruneLocked(now.Add(DefaultPruneAfter + 2*time.Second))
	if len(s.sessions) != 1 || s.sessions["running"] == nil {
		t.Fatalf("got %d sessions after PruneAfter, want only the running one", len(s.sessions))
	}
}
