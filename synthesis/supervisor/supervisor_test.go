package supervisor

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/synthesis"
)

func TestDirFiles(t *testing.T) {
	d := Dir(filepath.Join(t.TempDir(), "sessions", "0123456789abcdef"))
	req := Request{Base: "b", Owner: "o", URL: "https://x/y", Addresses: map[string]string{"80": "127.0.0.1:1"}, MaxOverlay: 5}
	if err := Create(d, req); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{string(d), filepath.Dir(string(d))} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("%s: %v %v, want 0700", p, fi.Mode(), err)
		}
	}
	if err := Create(d, req); err == nil {
		t.Fatal("a second session with the same ID was created")
	}
	got, err := d.ReadRequest()
	if err != nil || got.URL != req.URL || got.Addresses["80"] != "127.0.0.1:1" {
		t.Fatalf("request: %+v %v", got, err)
	}
	for _, n := range []string{"index", "resumed"} {
		if err := d.appendEvent(synthesis.Event{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	// A supervisor killed in a write leaves a torn line: it is not an event.
	f, _ := os.OpenFile(d.timelineFile(), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"event":"compl`)
	f.Close()
	tl, err := d.ReadTimeline()
	if err != nil || len(tl) != 2 || tl[1].Name != "resumed" {
		t.Fatalf("timeline: %+v %v", tl, err)
	}
	if _, _, ok, err := d.ReadState(); ok || err != nil {
		t.Fatalf("a running session has a state: %v", err)
	}
	if err := d.WriteState(State{State: "failed", Error: "e"}); err != nil {
		t.Fatal(err)
	}
	if st, _, ok, err := d.ReadState(); !ok || err != nil || st.State != "failed" || st.Error != "e" {
		t.Fatalf("state: %+v %v %v", st, ok, err)
	}
}

// TestControlSocket drives the control API as the server does: a stream that joins late gets
// the events it lacks, then new ones, then the end; a stop with a reason ends the session
// with it; a dead socket is not alive.
func TestControlSocket(t *testing.T) {
	d := Dir(filepath.Join(t.TempDir(), "s1"))
	if err := Create(d, Request{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	s := &supervisor{dir: d, cancel: cancel, log: os.Stderr, ended: make(chan struct{}), changed: make(chan struct{})}
	l, err := net.Listen("unix", d.Socket())
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: s.handler()}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		hs.Serve(l)
	}()
	// The session: two events, then it waits to be stopped, and fails with the reason.
	go func() {
		defer wg.Done()
		s.record(synthesis.Event{Name: "index"})
		s.record(synthesis.Event{Name: "resumed"})
		<-ctx.Done()
		s.finish(State{State: "failed", Error: context.Cause(ctx).Error()})
	}()
	defer func() {
		hs.Close()
		wg.Wait()
	}()

	c := NewClient(d)
	defer c.Close()
	if err := c.WaitAlive(ctx, func() bool { return false }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { ev, _, _ := s.since(0); return len(ev) == 2 })
	var got []string
	follow := make(chan State, 1)
	go func() {
		st, err := c.Follow(context.Background(), 1, func(e synthesis.Event) { got = append(got, e.Name) })
		if err != nil {
			t.Error(err)
		}
		follow <- st
	}()
	if err := c.Stop(context.Background(), "upload broke off"); err != nil {
		t.Fatal(err)
	}
	st := <-follow
	if st.State != "failed" || st.Error != "upload broke off" || len(got) != 1 || got[0] != "resumed" {
		t.Fatalf("stream: %v, end %+v", got, st)
	}
	hs.Close()
	if c.Alive(context.Background()) {
		t.Fatal("a closed socket answers")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
