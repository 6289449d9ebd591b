package registry

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
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/overlay"
)

// TestRegistry is a real registry (Debian's docker-registry, distribution 2.8) on loopback,
// with htpasswd basic auth and its storage in a test directory. It stops when the test ends.
type TestRegistry struct {
	Host               string // 127.0.0.1:PORT
	Username, Password string
}

// Options are the options that reach the registry with the right credentials.
func (r *TestRegistry) Options() Options {
	return Options{PlainHTTP: true, Username: r.Username, Password: r.Password}
}

// Ref is a reference to repo:tag on the registry.
func (r *TestRegistry) Ref(t testing.TB, repoTag string) Ref {
	t.Helper()
	ref, err := ParseRef(r.Host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// StartRegistry starts a registry for the test.
func StartRegistry(t testing.TB) *TestRegistry {
	t.Helper()
	testguest.Require(t, "docker-registry")
	dir := t.TempDir()
	r := &TestRegistry{Username: "cloudlet", Password: "test-" + strconv.Itoa(mrand.Int())}
	// The lowest cost bcrypt allows: the registry checks it on every request.
	hash, err := bcrypt.GenerateFromPassword([]byte(r.Password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(r.Username+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.Host = fmt.Sprintf("127.0.0.1:%d", testguest.FreePort(t))
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
auth:
  htpasswd:
    realm: cloudlet-test
    path: %s
`, filepath.Join(dir, "storage"), r.Host, filepath.Join(dir, "htpasswd"))
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	cmd := exec.Command("docker-registry", "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start docker-registry: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + r.Host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return r
			}
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("docker-registry exited: %v\n%s", err, logBuf.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry did not answer on %s within 20 s\n%s", r.Host, logBuf.String())
		}
	}
}

// TestOverlay writes a small overlay for base b (n random chunks of its disk) to a file in
// the test's directory, and returns its path.
func TestOverlay(t testing.TB, b *base.Base, n int64, seed int64) string {
	t.Helper()
	cfg, _ := json.Marshal(b.Manifest.VM)
	m := overlay.Meta{Codec: overlay.CodecZstd, Config: cfg, Images: []overlay.Image{
		{Name: "disk", Size: b.Manifest.Files[base.DiskFile].Size},
		{Name: "memory", Size: b.Manifest.Files[base.MemoryFile].Size}}}
	if _, err := hex.Decode(m.BaseID[:], []byte(b.ID)); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, n*chunk.Size)
	mrand.New(mrand.NewSource(seed)).Read(data)
	var entries []overlay.Entry
	for i := range n {
		entries = append(entries, overlay.Entry{Image: 0, Index: i, Kind: overlay.KindBlob, Digest: chunk.Sum(data[i*chunk.Size : (i+1)*chunk.Size])})
	}
	var buf bytes.Buffer
	_, err := overlay.Write(context.Background(), &buf, t.TempDir(), m, []byte("devstate"), entries, nil,
		func(_ uint8, i int64) ([]byte, error) { return data[i*chunk.Size : (i+1)*chunk.Size], nil })
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "test.overlay")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// StallProxy passes requests on to a registry; its answers to GETs of one path (a blob's or a
// manifest's) stop sending (without closing) once they reach byte stallAt of what they serve,
// so a range request that starts there stalls at once. Only the first stalls answers stall
// (-1: all).
type StallProxy struct {
	Host    string // 127.0.0.1:PORT
	path    string // the end of the path
	stallAt int64
	stalls  atomic.Int64
	quit    chan struct{}

	mu     sync.Mutex
	starts []int64 // guarded by mu: where each GET of the blob started
}

// StartStallProxy starts a StallProxy in front of r for the test.
func (r *TestRegistry) StartStallProxy(t testing.TB, path string, stallAt int64, stalls int64) *StallProxy {
	t.Helper()
	sp := &StallProxy{path: path, stallAt: stallAt, quit: make(chan struct{})}
	sp.stalls.Store(stalls)
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: r.Host})
	rp.FlushInterval = -1 // each byte reaches the client before the stall
	rp.ModifyResponse = sp.modify
	rp.ErrorLog = log.New(io.Discard, "", 0) // the stalled answers' ends
	srv := httptest.NewServer(rp)
	t.Cleanup(func() {
		close(sp.quit) // first: the server waits for its handlers
		srv.Close()
	})
	sp.Host = strings.TrimPrefix(srv.URL, "http://")
	return sp
}

func (sp *StallProxy) modify(resp *http.Response) error {
	req := resp.Request
	if req.Method != http.MethodGet || !strings.HasSuffix(req.URL.Path, sp.path) {
		return nil
	}
	if resp.StatusCode/100 != 2 {
		return nil
	}
	start, end := int64(0), int64(1<<62)
	if r := req.Header.Get("Range"); r != "" {
		s, e, _ := strings.Cut(strings.TrimPrefix(r, "bytes="), "-")
		start, _ = strconv.ParseInt(s, 10, 64)
		end, _ = strconv.ParseInt(e, 10, 64)
	}
	sp.mu.Lock()
	sp.starts = append(sp.starts, start)
	sp.mu.Unlock()
	if start > sp.stallAt || end < sp.stallAt || !sp.stall() {
		return nil
	}
	resp.Body = &stallBody{ReadCloser: resp.Body, pos: start, stallAt: sp.stallAt, done: req.Context().Done(), quit: sp.quit}
	return nil
}

// stall says whether this answer stalls, and counts it.
func (sp *StallProxy) stall() bool {
	for {
		n := sp.stalls.Load()
		switch {
		case n < 0:
			return true
		case n == 0:
			return false
		case sp.stalls.CompareAndSwap(n, n-1):
			return true
		}
	}
}

// Started says whether a GET of the path started at byte at.
func (sp *StallProxy) Started(at int64) bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for _, s := range sp.starts {
		if s == at {
			return true
		}
	}
	return false
}

type stallBody struct {
	io.ReadCloser
	pos, stallAt int64
	done, quit   <-chan struct{}
}

func (b *stallBody) Read(p []byte) (int, error) {
	if b.pos >= b.stallAt {
		select {
		case <-b.done:
		case <-b.quit:
		}
		return 0, io.ErrUnexpectedEOF
	}
	p = p[:min(int64(len(p)), b.stallAt-b.pos)]
	n, err := b.ReadCloser.Read(p)
	b.pos += int64(n)
	return n, err
}
