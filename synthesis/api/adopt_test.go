package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/synthesis"
	"github.com/cloudlet/cloudlet/synthesis/supervisor"
)

// adoptingServer is a server over the sessions directory dir, as 'serve' runs one; stop ends
// it (the test's end does too) and waits for it.
func adoptingServer(t *testing.T, store *base.Store, dir string, maxSessions int) (ts *testServer, stop func()) {
	t.Helper()
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	srv := NewServer(ctx, ServerOptions{Store: store, ForwardHost: "127.0.0.1", Tokens: []string{testToken},
		Log: log.New(logs, "", 0), Sessions: dir, MaxSessions: maxSessions})
	hs := httptest.NewUnstartedServer(nil)
	hs.Config = srv.HTTPServer()
	hs.Start()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			hs.CloseClientConnections()
			hs.Close()
			srv.Wait()
		}
	}
	t.Cleanup(stop)
	return &testServer{Server: srv, URL: hs.URL, Log: logs}, stop
}

// testOwner is how a session directory names the owner of testToken.
func testOwner() string {
	sum := sha256.Sum256([]byte(testToken))
	return hex.EncodeToString(sum[:8])
}

// TestServerAdoptsSessions: a server lists the sessions it finds on disk as what they are (a
// live supervisor's as running, with its timeline, a dead one's as failed, an ended one's as
// it ended), counts the running ones against its slots, follows their new events, leaves them
// running when it exits, and stops them on DELETE.
func TestServerAdoptsSessions(t *testing.T) {
	store, b := testStore(t)
	dir := filepath.Join(t.TempDir(), "sessions")
	mk := func(id string) supervisor.Dir {
		d := supervisor.Dir(filepath.Join(dir, id))
		if err := supervisor.Create(d, supervisor.Request{Base: b.ID, Owner: testOwner(), Addresses: map[string]string{"80": "127.0.0.1:9"}}); err != nil {
			t.Fatal(err)
		}
		return d
	}
	ended, dead, live := mk("00000000000000e1"), mk("00000000000000d1"), mk("00000000000000a1")
	ended.WriteState(supervisor.State{State: "stopped"})
	fake, err := supervisor.NewFake(live)
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	fake.Record(synthesis.Event{Name: "index"})

	ts, stop := adoptingServer(t, store, dir, 1)
	for _, c := range []struct{ id, state, err string }{
		{ended.ID(), "stopped", ""},
		{dead.ID(), "failed", "supervisor exited"},
		{live.ID(), "running", ""},
	} {
		st, ok := ts.status(t, c.id)
		if !ok || st.State != c.state || !strings.Contains(st.Error, c.err) || st.Forwards["80"] != "127.0.0.1:9" {
			t.Errorf("session %s: %+v, want %s %q", c.id, st, c.state, c.err)
		}
	}
	if st, _, ok, _ := dead.ReadState(); !ok || st.State != "failed" {
		t.Errorf("the dead session's state file: %+v", st)
	}
	if st, _ := ts.status(t, live.ID()); len(st.Timeline) != 1 || st.Timeline[0].Name != "index" {
		t.Errorf("the live session's timeline: %+v", st.Timeline)
	}
	// The adopted session holds the only slot.
	if code, _, msg := ts.create(t, SessionRequest{Base: b.ID, URL: "http://127.0.0.1:1/x"}); code != http.StatusTooManyRequests {
		t.Errorf("a session beyond the slots: %d %s", code, msg)
	}
	fake.Record(synthesis.Event{Name: "resumed"})
	waitUntil(t, func() bool { st, _ := ts.status(t, live.ID()); return len(st.Timeline) == 2 })

	// The server exits: the session runs on, and the next server adopts it again.
	stop()
	select {
	case <-fake.Stopped():
		t.Fatalf("the server's exit stopped the session: %v", fake.Cause())
	default:
	}
	ts, _ = adoptingServer(t, store, dir, 1)
	if st, _ := ts.status(t, live.ID()); st.State != "running" || len(st.Timeline) != 2 {
		t.Fatalf("after a restart: %+v", st)
	}
	done := make(chan int, 1)
	go func() {
		code, _, _ := ts.try("DELETE", "/v1/sessions/"+live.ID(), "", nil)
		done <- code
	}()
	<-fake.Stopped()
	fake.End(supervisor.State{State: "stopped"})
	if code := <-done; code != http.StatusNoContent {
		t.Fatalf("DELETE: %d", code)
	}
	if st, _ := ts.status(t, live.ID()); st.State != "stopped" {
		t.Fatalf("after DELETE: %+v", st)
	}
}

// TestServerSeesSupervisorDie: a session whose supervisor stops answering fails, named.
func TestServerSeesSupervisorDie(t *testing.T) {
	store, b := testStore(t)
	dir := filepath.Join(t.TempDir(), "sessions")
	d := supervisor.Dir(filepath.Join(dir, "00000000000000a2"))
	if err := supervisor.Create(d, supervisor.Request{Base: b.ID, Owner: testOwner()}); err != nil {
		t.Fatal(err)
	}
	fake, err := supervisor.NewFake(d)
	if err != nil {
		t.Fatal(err)
	}
	ts, _ := adoptingServer(t, store, dir, 2)
	fake.Close()
	if st := ts.waitState(t, d.ID(), 5*time.Second); st.State != "failed" || !strings.Contains(st.Error, "supervisor exited") {
		t.Fatalf("after its supervisor died: %+v", st)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSupervisorEndsBeforeItAnswers: a supervisor may fail its session and exit before the
// server first reaches its socket; the session then fails with the supervisor's recorded
// reason and events, and only a supervisor that recorded nothing is "exited at start".
func TestSupervisorEndsBeforeItAnswers(t *testing.T) {
	for _, c := range []struct {
		name   string
		record bool
		want   string
	}{
		{"recorded its end", true, "not an overlay"},
		{"recorded nothing", false, "supervisor exited at start"},
	} {
		t.Run(c.name, func(t *testing.T) {
			store, b := testStore(t)
			logs := &syncBuffer{}
			ctx, cancel := context.WithCancel(context.Background())
			srv := NewServer(ctx, ServerOptions{Store: store, ForwardHost: "127.0.0.1", Tokens: []string{testToken},
				Log: log.New(logs, "", 0), Sessions: filepath.Join(t.TempDir(), "sessions"),
				StartSupervisor: func(d supervisor.Dir) (*exec.Cmd, error) {
					if c.record {
						supervisor.AppendEvent(d, synthesis.Event{Name: "index"})
						d.WriteState(supervisor.State{State: "failed", Error: "not an overlay"})
					}
					cmd := exec.Command("true")
					return cmd, cmd.Start()
				}})
			hs := httptest.NewServer(srv.Handler())
			defer func() {
				cancel()
				hs.Close()
				srv.Wait()
			}()
			ts := &testServer{Server: srv, URL: hs.URL, Log: logs}
			code, st, msg := ts.create(t, SessionRequest{Base: b.ID, URL: "http://127.0.0.1:1/x"})
			if code != http.StatusCreated {
				t.Fatalf("create: %d %s", code, msg)
			}
			st = ts.waitState(t, st.ID, 5*time.Second)
			if st.State != "failed" || !strings.Contains(st.Error, c.want) || c.record && len(st.Timeline) != 1 {
				t.Fatalf("got %+v, want failed with %q", st, c.want)
			}
		})
	}
}
