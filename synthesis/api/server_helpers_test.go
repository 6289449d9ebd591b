package api

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	mrand "math/rand"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis"
)

// testStore is a store with one small synthetic base (no QEMU needed to make it).
func testStore(t *testing.T) (*base.Store, *base.Base) {
	t.Helper()
	s, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s, base.CommitTiny(t, s, "test")
}

// syncBuffer is a log sink that tests read while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testToken is the bearer token of the test servers.
const testToken = "test-token"

// testServer is a synthesis server on a real loopback listener, configured as 'cloudlet serve'
// configures its http.Server. It stops (sessions included) when the test ends.
type testServer struct {
	*Server
	URL  string
	Base *base.Base
	Log  *syncBuffer
}

func newTestServer(t *testing.T, opts ServerOptions) *testServer {
	t.Helper()
	store, b := testStore(t)
	logs := &syncBuffer{}
	opts.Store, opts.ForwardHost = store, "127.0.0.1"
	opts.Tokens = []string{testToken}
	// The test's origins are on loopback.
	opts.AllowOrigins = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	opts.Log = log.New(logs, "", 0)
	ctx, cancel := context.WithCancel(context.Background())
	srv := NewServer(ctx, opts)
	hs := httptest.NewUnstartedServer(nil)
	hs.Config = srv.HTTPServer()
	hs.Start()
	t.Cleanup(func() {
		cancel()
		hs.CloseClientConnections()
		hs.Close()
		srv.Wait()
	})
	return &testServer{Server: srv, URL: hs.URL, Base: b, Log: logs}
}

// do sends a request and returns the status and the body.
func (ts *testServer) do(t *testing.T, method, path, ctype string, body io.Reader) (int, []byte) {
	t.Helper()
	code, b, err := ts.try(method, path, ctype, body)
	if err != nil {
		t.Fatal(err)
	}
	return code, b
}

// try is do for goroutines other than the test's: it returns the error.
func (ts *testServer) try(method, path, ctype string, body io.Reader) (int, []byte, error) {
	req, err := http.NewRequest(method, ts.URL+path, body)
	if err != nil {
		return 0, nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// create posts a session request for the test base from a URL.
func (ts *testServer) create(t *testing.T, req SessionRequest) (int, SessionStatus, string) {
	t.Helper()
	if req.Base == "" {
		req.Base = ts.Base.ID
	}
	if req.URL == "" {
		req.URL = "http://127.0.0.1:9/app.overlay"
	}
	body, _ := json.Marshal(req)
	code, b := ts.do(t, "POST", "/v1/sessions", "application/json", bytes.NewReader(body))
	var st SessionStatus
	if code == http.StatusCreated {
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatalf("create answer %s: %v", b, err)
		}
	}
	return code, st, string(b)
}

// status returns a session's status, or ok false on 404.
func (ts *testServer) status(t *testing.T, id string) (SessionStatus, bool) {
	t.Helper()
	code, b := ts.do(t, "GET", "/v1/sessions/"+id, "", nil)
	var st SessionStatus
	if code == http.StatusNotFound {
		return st, false
	}
	if code != http.StatusOK {
		t.Fatalf("GET session %s: %d %s", id, code, b)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st, true
}

// waitState polls a session until it leaves "running" or the time is up.
func (ts *testServer) waitState(t *testing.T, id string, within time.Duration) SessionStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, ok := ts.status(t, id)
		if !ok {
			t.Fatalf("session %s is gone", id)
		}
		if st.State != "running" || time.Now().After(deadline) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// basesAnswer checks that the server still serves its simplest endpoint.
func (ts *testServer) basesAnswer(t *testing.T) {
	t.Helper()
	if code, b := ts.do(t, "GET", "/v1/bases", "", nil); code != http.StatusOK || !strings.Contains(string(b), ts.Base.ID) {
		t.Fatalf("GET /v1/bases: %d %s", code, b)
	}
}

// Stand-ins for Run.

// runUntilStopped is a session that runs until it is stopped.
func runUntilStopped(ctx context.Context, o synthesis.Options) (synthesis.Timeline, error) {
	if o.Origin != nil {
		defer o.Origin.Close()
	}
	<-ctx.Done()
	return nil, nil
}

// runFails is a session that fails at once.
func runFails(ctx context.Context, o synthesis.Options) (synthesis.Timeline, error) {
	if o.Origin != nil {
		o.Origin.Close()
	}
	return nil, fmt.Errorf("stand-in failure")
}

// runReadsAll reads the whole overlay from its origin, then runs until stopped.
func runReadsAll(ctx context.Context, o synthesis.Options) (synthesis.Timeline, error) {
	if o.Origin == nil {
		return nil, fmt.Errorf("no origin")
	}
	defer o.Origin.Close()
	p := make([]byte, o.Origin.Size())
	if err := o.Origin.ReadAt(ctx, p, 0); err != nil {
		return nil, err
	}
	<-ctx.Done()
	return nil, nil
}

// testOverlay is an overlay for b that changes the disk's first chunks; with corrupt, a byte
// of its last blob is flipped, which a fetch finds after the images are mounted.
func testOverlay(t *testing.T, b *base.Base, corrupt bool) []byte {
	t.Helper()
	cfg, _ := json.Marshal(b.Manifest.VM)
	m := overlay.Meta{Codec: overlay.CodecZstd, Config: cfg, Images: []overlay.Image{
		{Name: "disk", Size: b.Manifest.Files[base.DiskFile].Size},
		{Name: "memory", Size: b.Manifest.Files[base.MemoryFile].Size}}}
	if _, err := hex.Decode(m.BaseID[:], []byte(b.ID)); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 8*chunk.Size)
	mrand.New(mrand.NewSource(2)).Read(data)
	var entries []overlay.Entry
	for i := range int64(8) {
		entries = append(entries, overlay.Entry{Image: 0, Index: i, Kind: overlay.KindBlob, Digest: chunk.Sum(data[i*chunk.Size : (i+1)*chunk.Size])})
	}
	var buf bytes.Buffer
	_, err := overlay.Write(context.Background(), &buf, t.TempDir(), m, []byte("devstate"), entries, nil,
		func(_ uint8, i int64) ([]byte, error) { return data[i*chunk.Size : (i+1)*chunk.Size], nil })
	if err != nil {
		t.Fatal(err)
	}
	file := buf.Bytes()
	if corrupt {
		file[len(file)-10] ^= 1
	}
	return file
}

// testData is n seeded random bytes: an overlay-sized payload that no codec shrinks.
func testData(n int) []byte {
	b := make([]byte, n)
	mrand.New(mrand.NewSource(1)).Read(b)
	return b
}
