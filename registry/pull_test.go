package registry_test

import (
	"bytes"
	"context"
	"io"
	"log"
	mrand "math/rand"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/registry"
	"github.com/cloudlet/cloudlet/synthesis/origin"
	"github.com/cloudlet/cloudlet/vm"
)

// A registry that stops sending in the middle of a blob: a pull fails after the idle timeout
// and the retries without progress, with a message naming the blob; one that stalls once is
// read on from the byte it stopped at, and the base pulled is the one pushed.
func TestPullStalls(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg := registry.StartRegistry(t)
	mem := make([]byte, 16<<20)
	mrand.New(mrand.NewSource(1)).Read(mem)
	b := base.CommitTinyMemory(t, newStore(t), "random", func(*vm.Config) {}, mem)
	if _, err := registry.PushBase(ctx, b, reg.Ref(t, "bases/random:1"), reg.Options(), nil); err != nil {
		t.Fatal(err)
	}
	const (
		idle     = 300 * time.Millisecond
		retryFor = time.Second
		stallAt  = 5<<20 + 12345 // in the second read of the memory image, not on a boundary
	)
	digest := "sha256:" + b.Manifest.Files[base.MemoryFile].SHA256
	opts := reg.Options()
	opts.ManifestTimeout = time.Second
	for _, c := range []struct {
		name    string
		path    string // whose answers stall
		stallAt int64
		stalls  int64
		wantErr []string
	}{
		{"blob stalls for good", "/blobs/" + digest, stallAt, -1, []string{digest, "timed out: no data for " + idle.String()}},
		{"blob stalls once", "/blobs/" + digest, stallAt, 1, nil},
		{"manifest stalls", "/manifests/1", 10, -1, []string{"bases/random:1", "no complete answer within 1s"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			sp, host := startStallProxy(t, reg, c.path, c.stallAt, c.stalls)
			ref, err := registry.ParseRef(host + "/bases/random:1")
			if err != nil {
				t.Fatal(err)
			}
			open := origin.RegistryBlobs(origin.HTTPOptions{IdleTimeout: idle, RetryFor: retryFor,
				OCI: origin.OCIOptions{Registry: opts}})
			dst := newStore(t)
			start := time.Now()
			got, _, err := registry.PullBase(ctx, dst, ref, opts, open, nil)
			took := time.Since(start)
			t.Logf("pull: %v after %v", err, took.Round(time.Millisecond))
			if c.wantErr != nil {
				for _, want := range c.wantErr {
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Fatalf("pull: %v; want an error saying %q", err, want)
					}
				}
				if took > 10*time.Second {
					t.Fatalf("the pull gave up after %v, want within the idle timeout and the retries (%v, %v)", took, idle, retryFor)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !sp.started(stallAt) {
				t.Fatalf("no request resumed the blob at byte %d (requests started at %v)", stallAt, sp.starts)
			}
			if got.ID != b.ID {
				t.Fatalf("pulled base %s, want %s", got.ID, b.ID)
			}
			if err := got.Verify(ctx, nil); err != nil {
				t.Fatal(err)
			}
			if data, err := os.ReadFile(got.Path(base.MemoryFile)); err != nil || !bytes.Equal(data, mem) {
				t.Fatalf("the pulled memory image is not the one pushed (%v)", err)
			}
		})
	}
}

// blobs reads pulled blobs as the CLI does, with the default timeouts.
func blobs(o registry.Options) registry.OpenBlob {
	return origin.RegistryBlobs(origin.HTTPOptions{OCI: origin.OCIOptions{Registry: o}})
}

// stallProxy passes requests on to a registry; its answers to GETs of one path (a blob's or a
// manifest's) stop sending (without closing) once they reach byte stallAt of the blob, so a
// range request that starts there stalls at once. Only the first stalls answers stall (-1: all).
type stallProxy struct {
	path    string // the end of the path
	stallAt int64
	stalls  atomic.Int64
	quit    chan struct{}

	mu     sync.Mutex
	starts []int64 // guarded by mu: where each GET of the blob started
}

func startStallProxy(t *testing.T, reg *registry.TestRegistry, path string, stallAt int64, stalls int64) (*stallProxy, string) {
	t.Helper()
	sp := &stallProxy{path: path, stallAt: stallAt, quit: make(chan struct{})}
	sp.stalls.Store(stalls)
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: reg.Host})
	rp.FlushInterval = -1 // each byte reaches the client before the stall
	rp.ModifyResponse = sp.modify
	rp.ErrorLog = log.New(io.Discard, "", 0) // the stalled answers' ends
	srv := httptest.NewServer(rp)
	t.Cleanup(func() {
		close(sp.quit) // first: the server waits for its handlers
		srv.Close()
	})
	return sp, strings.TrimPrefix(srv.URL, "http://")
}

func (sp *stallProxy) modify(resp *http.Response) error {
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
func (sp *stallProxy) stall() bool {
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

func (sp *stallProxy) started(at int64) bool {
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
