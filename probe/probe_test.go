package probe_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/probe"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in, wantErr string
	}{
		{"http://127.0.0.1:8080/", ""},
		{"https://example.test/x", ""},
		{"tcp://127.0.0.1:22", ""},
		{"serial:login:", ""},
		{"http://", "bad URL"},
		{"tcp://nohost", "HOST:PORT"},
		{"serial:", "no text"},
		{"ftp://x", "want http"},
		{"", "want http"},
	}
	for _, tc := range tests {
		_, err := probe.Parse(tc.in)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("Parse(%q) = %v, want error %q", tc.in, err, tc.wantErr)
		}
	}
}

// TestHTTPWaitsForSuccess: non-2xx answers are retried until the server answers 200.
func TestHTTPWaitsForSuccess(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	if err := wait(t, srv.URL+"/ready", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 3 {
		t.Fatalf("%d calls, want 3", calls.Load())
	}
}

// TestTimeoutSaysWhy: a dead target ends with the deadline and the last attempt's error.
func TestTimeoutSaysWhy(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	for _, s := range []string{"tcp://" + addr, "http://" + addr + "/"} {
		p, _ := probe.Parse(s)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := p.Wait(ctx, nil)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "deadline") || !strings.Contains(err.Error(), "refused") {
			t.Errorf("%s: %v", s, err)
		}
	}
}

// TestTimeoutKeepsLastAnswer: when ctx ends during an attempt, the error gives what the
// attempt before it saw, not the cut-short attempt's own timeout.
func TestTimeoutKeepsLastAnswer(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		<-r.Context().Done() // the next attempts hang until the probe gives up
	}))
	defer srv.Close()
	err := wait(t, srv.URL+"/ready", 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "deadline") || !strings.Contains(err.Error(), "503") {
		t.Fatalf("%v, want the deadline and the 503 the last complete attempt saw", err)
	}
}

// TestSlowAnswerNotAbandoned: a guest that serves one request at a time and is stalled for
// longer than a try waits (a VM paging in its working set over a slow link) must answer the
// probe's first request, not first work through requests whose clients have gone. A probe
// that closes a slow try and sends another leaves a dead request ahead of the live one in the
// guest's queue: its first answer comes a whole request late.
func TestSlowAnswerNotAbandoned(t *testing.T) {
	const stall, work = 2500 * time.Millisecond, 300 * time.Millisecond
	start := time.Now()
	var serial sync.Mutex
	var answered, dead atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		serial.Lock()
		defer serial.Unlock()
		time.Sleep(time.Until(start.Add(stall)))
		time.Sleep(work)
		if r.Context().Err() != nil {
			if answered.Load() == 0 {
				dead.Add(1)
			}
			return
		}
		answered.Add(1)
	}))
	defer srv.Close()
	if err := wait(t, srv.URL+"/", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if n := dead.Load(); n > 0 || took > stall+work+time.Second/2 {
		t.Errorf("answered after %v, %d requests served to clients that had gone first; want one request's work after the %v stall", took, n, stall)
	}
}

// TestLostTryGetsAFreshOne: a request lost on its way (the guest's network not up yet) hangs
// for good; a fresh try beside it answers.
func TestLostTryGetsAFreshOne(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			<-r.Context().Done()
		}
	}))
	defer srv.Close()
	if err := wait(t, srv.URL+"/", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("%d requests, want the lost one and a fresh one", n)
	}
}

// TestTCPNeedsAnOpenConnection: a listener that accepts and closes at once (what QEMU's
// user-net forward does when the guest refuses) is not ready; one that keeps it open is.
func TestTCPNeedsAnOpenConnection(t *testing.T) {
	tests := []struct {
		name  string
		serve func(net.Conn)
		ready bool
	}{
		{"closes at once", func(c net.Conn) { c.Close() }, false},
		{"stays open", func(c net.Conn) { time.Sleep(time.Second); c.Close() }, true},
		{"speaks first", func(c net.Conn) { c.Write([]byte("SSH-2.0\r\n")); time.Sleep(time.Second); c.Close() }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go tc.serve(c)
				}
			}()
			p, _ := probe.Parse("tcp://" + l.Addr().String())
			ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
			defer cancel()
			if err := p.Wait(ctx, nil); (err == nil) != tc.ready {
				t.Fatalf("ready = %v (%v), want %v", err == nil, err, tc.ready)
			}
		})
	}
}

// wait parses target and waits for it, for at most timeout.
func wait(t *testing.T, target string, timeout time.Duration) error {
	t.Helper()
	p, err := probe.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return p.Wait(ctx, nil)
}

type fakeConsole struct{ text string }

func (f fakeConsole) WaitFor(ctx context.Context, text string) error {
	if strings.Contains(f.text, text) {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

func TestSerial(t *testing.T) {
	p, _ := probe.Parse("serial:ready")
	if err := p.Wait(context.Background(), fakeConsole{"guest: ready\n"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.Wait(ctx, fakeConsole{"booting"}); err == nil {
		t.Fatal("serial probe passed without its text")
	}
}
