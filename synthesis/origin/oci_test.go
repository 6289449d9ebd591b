package origin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/internal/netguard"
	"github.com/cloudlet/cloudlet/registry"
)

// registryProxy stands in front of a real registry with the faults of real ones: it can
// strip range support, and it can redirect blob GETs to a "blob storage" server whose URLs
// expire after a few uses, while the registry keeps handing out an expired one for a while
// (a cached presigned URL). Storage answers each request with another ETag.
type registryProxy struct {
	*httptest.Server
	storage     *httptest.Server
	reg         *registry.TestRegistry
	stripRanges bool
	redirect    bool
	corruptAt   int64 // if positive, the byte of every whole blob answer at this offset is flipped
	stallAt     int64 // if positive, every whole blob answer stops sending there, connection open

	mu        sync.Mutex
	token     int
	usesLeft  int
	staleLeft int

	Redirects, Expired, StorageGets atomic.Int64
}

// Each presigned URL serves usesLeft requests; then the registry hands it out staleLeft more
// times before it makes a new one.
const proxyURLUses, proxyStaleUses = 3, 1

func newRegistryProxy(t *testing.T, reg *registry.TestRegistry, stripRanges, redirect bool) *registryProxy {
	p := &registryProxy{reg: reg, stripRanges: stripRanges, redirect: redirect}
	target, _ := url.Parse("http://" + reg.Host)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(r *http.Response) error {
		if p.stripRanges {
			r.Header.Del("Accept-Ranges")
		}
		if p.corruptAt > 0 && r.StatusCode == http.StatusOK && strings.Contains(r.Request.URL.Path, "/blobs/") {
			body, err := io.ReadAll(r.Body)
			r.Body.Close()
			if err != nil {
				return err
			}
			if int64(len(body)) > p.corruptAt {
				body[p.corruptAt] ^= 1
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		if p.stallAt > 0 && r.StatusCode == http.StatusOK && strings.Contains(r.Request.URL.Path, "/blobs/") {
			r.Body = &stallingBody{ReadCloser: r.Body, left: p.stallAt, ctx: r.Request.Context()}
		}
		return nil
	}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.stripRanges {
			r.Header.Del("Range")
		}
		if p.redirect && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") && r.Header.Get("Authorization") != "" {
			p.Redirects.Add(1)
			http.Redirect(w, r, fmt.Sprintf("%s/%d%s", p.storage.URL, p.presign(), r.URL.Path), http.StatusTemporaryRedirect)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	// Blob storage is at another address (127.0.0.2, loopback too), as it is in real life: a
	// guard can tell it from the registry.
	p.storage = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.StorageGets.Add(1)
		var token int
		var path string
		fmt.Sscanf(r.URL.Path, "/%d", &token)
		_, path, _ = strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if !p.use(token) {
			p.Expired.Add(1)
			http.Error(w, "Request has expired", http.StatusForbidden)
			return
		}
		r.URL.Path = "/" + path
		r.SetBasicAuth(reg.Username, reg.Password) // storage is the registry's, with its own access
		rec := &etagWriter{ResponseWriter: w, etag: fmt.Sprintf(`"%d-%d"`, token, p.StorageGets.Load())}
		rp.ServeHTTP(rec, r)
	}))
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	p.storage.Listener.Close()
	p.storage.Listener = l
	p.storage.Start()
	t.Cleanup(func() { p.Server.Close(); p.storage.Close() })
	return p
}

func (p *registryProxy) presign() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.usesLeft == 0 && p.staleLeft > 0 {
		p.staleLeft--
		return p.token
	}
	if p.usesLeft == 0 {
		p.token++
		p.usesLeft, p.staleLeft = proxyURLUses, proxyStaleUses
	}
	return p.token
}

func (p *registryProxy) use(token int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if token != p.token || p.usesLeft == 0 {
		return false
	}
	p.usesLeft--
	return true
}

// etagWriter gives every answer of blob storage its own ETag.
type etagWriter struct {
	http.ResponseWriter
	etag string
}

func (w *etagWriter) WriteHeader(code int) {
	w.Header().Set("ETag", w.etag)
	w.ResponseWriter.WriteHeader(code)
}

// stallingBody passes left bytes on, then sends nothing until its request ends.
type stallingBody struct {
	io.ReadCloser
	left int64
	ctx  context.Context
}

func (b *stallingBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		<-b.ctx.Done()
		return 0, b.ctx.Err()
	}
	n, err := b.ReadCloser.Read(p[:min(int64(len(p)), b.left)])
	b.left -= int64(n)
	return n, err
}

func (p *registryProxy) host() string { return strings.TrimPrefix(p.URL, "http://") }

// pushTestOverlay pushes an overlay of a tiny base to reg as apps/test:v1 and returns its bytes.
func pushTestOverlay(t *testing.T, ctx context.Context, reg *registry.TestRegistry) []byte {
	s, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := base.CommitTiny(t, s, "tiny")
	file := registry.TestOverlay(t, b, 64, 3)
	if _, err := registry.PushOverlay(ctx, file, reg.Ref(t, "apps/test:v1"), reg.Options(), nil); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// readAll reads o in 16 KiB ranges, as a synthesis would.
func readAll(ctx context.Context, o Origin) ([]byte, error) {
	out := make([]byte, o.Size())
	for off := int64(0); off < o.Size(); off += 16 << 10 {
		n := min(16<<10, o.Size()-off)
		if err := o.ReadAt(ctx, out[off:off+n], off); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func TestOCIOrigin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg := registry.StartRegistry(t)
	data := pushTestOverlay(t, ctx, reg)
	direct := registry.Scheme + reg.Host + "/apps/test:v1"
	withOpts := func(f func(*HTTPOptions)) HTTPOptions {
		o := HTTPOptions{RetryFor: 20 * time.Second, OCI: OCIOptions{Registry: reg.Options()}}
		f(&o)
		return o
	}
	none := func(*HTTPOptions) {}

	t.Run("by tag and by digest", func(t *testing.T) {
		ov, err := registry.ResolveOverlay(ctx, reg.Ref(t, "apps/test:v1"), reg.Options(), nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, src := range []string{direct, registry.Scheme + reg.Host + "/apps/test@" + ov.Manifest.Digest.String()} {
			checkReads(t, ctx, src, withOpts(none), data)
		}
	})
	t.Run("expiring redirects to blob storage", func(t *testing.T) {
		p := newRegistryProxy(t, reg, false, true)
		checkReads(t, ctx, registry.Scheme+p.host()+"/apps/test:v1", withOpts(none), data)
		if p.Redirects.Load() < 10 || p.Expired.Load() == 0 {
			t.Fatalf("%d redirects, %d expired: want the reads to have met expired URLs", p.Redirects.Load(), p.Expired.Load())
		}
	})
	t.Run("no range support", func(t *testing.T) {
		p := newRegistryProxy(t, reg, true, false)
		_, err := Open(ctx, registry.Scheme+p.host()+"/apps/test:v1", withOpts(none))
		if err == nil || !strings.Contains(err.Error(), "does not answer range requests") || !strings.Contains(err.Error(), "--oci-full-download") {
			t.Fatalf("open through a registry without ranges: %v", err)
		}
	})
	t.Run("no range support, full download of a corrupt blob", func(t *testing.T) {
		p := newRegistryProxy(t, reg, true, false)
		p.corruptAt = int64(len(data) / 2)
		o, err := Open(ctx, registry.Scheme+p.host()+"/apps/test:v1", withOpts(func(o *HTTPOptions) {
			o.OCI.FullDownload, o.OCI.SpoolDir = true, t.TempDir()
		}))
		if err == nil { // the header may be read before the download ends, or after
			defer o.Close()
			_, err = readAll(ctx, o)
		}
		if err == nil || !strings.Contains(err.Error(), "got sha256") {
			t.Fatalf("full download of a corrupt blob read to its end: %v", err)
		}
	})
	t.Run("no range support, full download that stalls", func(t *testing.T) {
		p := newRegistryProxy(t, reg, true, false)
		p.stallAt = int64(len(data) / 2)
		o, err := Open(ctx, registry.Scheme+p.host()+"/apps/test:v1", withOpts(func(o *HTTPOptions) {
			o.OCI.FullDownload, o.OCI.SpoolDir, o.IdleTimeout = true, t.TempDir(), 300*time.Millisecond
		}))
		if err == nil {
			defer o.Close()
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			_, err = readAll(rctx, o)
		}
		if err == nil || !strings.Contains(err.Error(), "timed out: no data for 300ms") {
			t.Fatalf("full download whose registry stops sending: %v, want an idle timeout", err)
		}
	})
	t.Run("no range support, full download", func(t *testing.T) {
		p := newRegistryProxy(t, reg, true, true)
		spool := t.TempDir()
		checkReads(t, ctx, registry.Scheme+p.host()+"/apps/test:v1", withOpts(func(o *HTTPOptions) {
			o.OCI.FullDownload, o.OCI.SpoolDir = true, spool
		}), data)
		if left, _ := os.ReadDir(spool); len(left) != 0 {
			t.Fatalf("the spool file outlived its origin: %v", left)
		}
	})

	// A manifest whose overlay-ID annotation is not the blob's is refused before any read.
	badID := pushWithAnnotation(t, ctx, reg, registry.AnnotationOverlayID, strings.Repeat("ab", 32))
	// Strangers' references, as the server opens them: its guard, and errors that quote nothing
	// the registry said.
	loopback := netguard.New(netip.MustParsePrefix("127.0.0.0/8"))
	for _, c := range []struct {
		name, src string
		opts      HTTPOptions
		want      string
	}{
		{"wrong overlay ID", registry.Scheme + reg.Host + "/apps/test:" + badID, withOpts(none), "the manifest's annotation says abab"},
		{"missing tag", registry.Scheme + reg.Host + "/apps/test:v9", withOpts(none), "not found"},
		{"unknown digest", registry.Scheme + reg.Host + "/apps/test@sha256:" + strings.Repeat("0", 64), withOpts(none), "not found"},
		{"wrong credentials", direct, withOpts(func(o *HTTPOptions) { o.OCI.Registry.Password = "wrong" }), "refused the credentials"},
		{"guarded: loopback registry", direct, withOpts(func(o *HTTPOptions) { o.Guard = netguard.New() }), "is loopback: refused"},
		{"guarded: wrong credentials", direct, withOpts(func(o *HTTPOptions) { o.Guard, o.OCI.Registry.Password = loopback, "wrong" }), "the registry answered 401 Unauthorized"},
		{"guarded: redirect to blob storage on a refused address", registry.Scheme + newRegistryProxy(t, reg, false, true).host() + "/apps/test:v1",
			withOpts(func(o *HTTPOptions) { o.Guard = netguard.New(netip.MustParsePrefix("127.0.0.1/32")) }), "address 127.0.0.2 is loopback: refused"},
		{"guarded: missing tag", registry.Scheme + reg.Host + "/apps/test:v9", withOpts(func(o *HTTPOptions) { o.Guard = loopback }), "not found in the registry"},
		{"not a reference", "oci://" + reg.Host + "/apps/test", withOpts(none), "want REGISTRY/REPOSITORY:TAG"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o, err := Open(ctx, c.src, c.opts)
			if err == nil {
				o.Close()
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("open %s: %v, want an error saying %q", c.src, err, c.want)
			}
			if c.opts.Guard != nil && (strings.Contains(err.Error(), "authentication required") || strings.Contains(err.Error(), "manifest unknown")) {
				t.Fatalf("a stranger's error quotes the registry: %v", err)
			}
		})
	}
}

func checkReads(t *testing.T, ctx context.Context, src string, opts HTTPOptions, want []byte) {
	t.Helper()
	o, err := Open(ctx, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if o.String() != src {
		t.Errorf("origin named %q, want %q", o.String(), src)
	}
	got, err := readAll(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes through %s, not the overlay's %d", len(got), src, len(want))
	}
}

// pushWithAnnotation pushes a copy of apps/test:v1's manifest with one annotation changed,
// and returns its tag.
func pushWithAnnotation(t *testing.T, ctx context.Context, reg *registry.TestRegistry, key, value string) string {
	ref := reg.Ref(t, "apps/test:v1")
	repo, err := registry.Repository(ref, reg.Options())
	if err != nil {
		t.Fatal(err)
	}
	_, rc, err := repo.FetchReference(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(rc)
	rc.Close()
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	m.Annotations[key] = value
	raw, _ = json.Marshal(m)
	desc := content.NewDescriptorFromBytes(ocispec.MediaTypeImageManifest, raw)
	tag := "bad-" + filepath.Base(strings.ReplaceAll(key, ".", "-"))
	if err := repo.PushReference(ctx, desc, bytes.NewReader(raw), tag); err != nil {
		t.Fatal(err)
	}
	return tag
}
