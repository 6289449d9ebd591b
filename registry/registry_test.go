package registry_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/registry"
)

func newStore(t *testing.T) *base.Store {
	t.Helper()
	s, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A base pushed from one home and pulled into another is the same base, every file checked;
// an overlay pushed beside it names it as its subject and resolves to its blob.
func TestPushPull(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg := registry.StartRegistry(t)
	src := newStore(t)
	b := base.CommitTiny(t, src, "tiny")
	baseRef := reg.Ref(t, "apps/tiny:base")
	baseDesc, err := registry.PushBase(ctx, b, baseRef, reg.Options(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// A second push (as after an interrupted one) uploads no blob the registry has.
	counter := &countingTransport{rt: http.DefaultTransport}
	opts := reg.Options()
	opts.Transport = counter
	if _, err := registry.PushBase(ctx, b, reg.Ref(t, "apps/tiny:base-again"), opts, nil); err != nil {
		t.Fatal(err)
	}
	if n := counter.uploads.Load(); n != 0 {
		t.Fatalf("a second push of the base started %d blob uploads, want none", n)
	}
	file := registry.TestOverlay(t, b, 8, 1)
	ovRef := reg.Ref(t, "apps/tiny:v1")
	if _, err := registry.PushOverlay(ctx, file, ovRef, reg.Options(), nil); err != nil {
		t.Fatal(err)
	}
	ov, err := registry.ResolveOverlay(ctx, ovRef, reg.Options(), nil)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(file)
	if ov.Blob.Size != int64(len(data)) || ov.BaseID != b.ID || len(ov.OverlayID) != 64 {
		t.Fatalf("resolved %+v, want a blob of %d bytes for base %s", ov, len(data), b.ID)
	}
	if ov.Subject == nil || ov.Subject.Digest != baseDesc.Digest {
		t.Fatalf("overlay subject %v, want the base's artifact %s", ov.Subject, baseDesc.Digest)
	}
	resp, err := ov.Client.Get(ov.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(data)) {
		t.Fatalf("GET the overlay blob: %s, %d bytes; want 200, %d bytes", resp.Status, resp.ContentLength, len(data))
	}

	// Pull by tag, and by the subject's digest, into other homes.
	for _, ref := range []registry.Ref{baseRef, reg.Ref(t, "apps/tiny@"+ov.Subject.Digest.String())} {
		dst := newStore(t)
		got, isNew, err := registry.PullBase(ctx, dst, ref, reg.Options(), blobs(reg.Options()), nil)
		if err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
		if got.ID != b.ID || !isNew {
			t.Fatalf("pull %s: base %s (new %v), want %s, new", ref, got.ID, isNew, b.ID)
		}
		if err := got.Verify(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if _, isNew, err := registry.PullBase(ctx, dst, ref, reg.Options(), blobs(reg.Options()), nil); err != nil || isNew {
			t.Fatalf("second pull: new %v, %v; want the base already here", isNew, err)
		}
		if _, err := os.Stat(filepath.Join(dst.Home(), "pulls", b.ID)); !os.IsNotExist(err) {
			t.Fatalf("the pull left its download directory: %v", err)
		}
	}
}

// A pull that broke off resumes from the bytes it has; bytes that do not match are thrown
// away with a message naming the digest, and the next pull succeeds.
func TestPullResume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg := registry.StartRegistry(t)
	b := base.CommitTiny(t, newStore(t), "tiny")
	ref := reg.Ref(t, "bases/tiny:1")
	if _, err := registry.PushBase(ctx, b, ref, reg.Options(), nil); err != nil {
		t.Fatal(err)
	}
	mem, err := os.ReadFile(b.Path(base.MemoryFile))
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, f := range b.Manifest.Files {
		total += f.Size
	}
	for _, c := range []struct {
		name     string
		partial  []byte
		wantErr  string
		maxBytes int64 // what the pull may fetch in all
	}{
		{"half of the right bytes", mem[:len(mem)/2], "", total - int64(len(mem)/2) + 64<<10},
		{"wrong bytes", append([]byte("not the memory image"), mem[:4096]...), "digest mismatch", 3 * total},
	} {
		t.Run(c.name, func(t *testing.T) {
			dst := newStore(t)
			counter := &countingTransport{rt: http.DefaultTransport}
			opts := reg.Options()
			opts.Transport = counter
			dir := filepath.Join(dst.Home(), "pulls", b.ID)
			os.MkdirAll(dir, 0o700)
			if err := os.WriteFile(filepath.Join(dir, base.MemoryFile), c.partial, 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := registry.PullBase(ctx, dst, ref, opts, blobs(opts), nil)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) || !strings.Contains(err.Error(), base.MemoryFile) {
					t.Fatalf("pull over %s: %v, want an error naming %s and %q", c.name, err, base.MemoryFile, c.wantErr)
				}
				_, _, err = registry.PullBase(ctx, dst, ref, opts, blobs(opts), nil)
			}
			if err != nil {
				t.Fatal(err)
			}
			if n := counter.n.Load(); n > c.maxBytes {
				t.Fatalf("the pull fetched %d bytes, want at most %d (the base has %d)", n, c.maxBytes, total)
			}
			if _, err := dst.Get(b.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The usual mistakes each get a message that names them.
func TestRegistryErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg := registry.StartRegistry(t)
	b := base.CommitTiny(t, newStore(t), "tiny")
	file := registry.TestOverlay(t, b, 4, 1)
	good := reg.Ref(t, "apps/x:v1")
	if _, err := registry.PushOverlay(ctx, file, good, reg.Options(), nil); err != nil {
		t.Fatal(err)
	}
	wrongPass := reg.Options()
	wrongPass.Password = "wrong"
	for _, c := range []struct {
		name string
		ref  registry.Ref
		opts registry.Options
		want string
	}{
		{"missing tag", reg.Ref(t, "apps/x:v2"), reg.Options(), "not found"},
		{"missing repository", reg.Ref(t, "apps/none:v1"), reg.Options(), "not found"},
		{"unknown digest", reg.Ref(t, "apps/x@sha256:"+strings.Repeat("ab", 32)), reg.Options(), "not found"},
		{"wrong credentials", good, wrongPass, "refused the credentials"},
		{"no credentials", good, registry.Options{PlainHTTP: true, DockerConfig: filepath.Join(t.TempDir(), "none.json")}, "wants credentials"},
		{"HTTPS to a plain-HTTP registry", good, registry.Options{Username: reg.Username, Password: reg.Password}, "give --plain-http"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := registry.ResolveOverlay(ctx, c.ref, c.opts, nil)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("resolve %s: %v, want an error saying %q", c.ref, err, c.want)
			}
		})
	}
	// A base reference is not an overlay, and the other way round.
	if _, err := registry.PushBase(ctx, b, reg.Ref(t, "apps/x:base"), reg.Options(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := registry.ResolveOverlay(ctx, reg.Ref(t, "apps/x:base"), reg.Options(), nil); err == nil || !strings.Contains(err.Error(), registry.ArtifactTypeBase) {
		t.Fatalf("resolve a base as an overlay: %v", err)
	}
	if _, _, err := registry.PullBase(ctx, newStore(t), good, reg.Options(), blobs(reg.Options()), nil); err == nil || !strings.Contains(err.Error(), registry.ArtifactTypeOverlay) {
		t.Fatalf("pull an overlay as a base: %v", err)
	}
}

func TestParseRef(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"oci://reg.example:5000/apps/face:v1", "reg.example:5000/apps/face:v1", true},
		{"reg.example/apps/face@sha256:" + strings.Repeat("0", 64), "reg.example/apps/face@sha256:" + strings.Repeat("0", 64), true},
		{"oci://reg.example/apps/face", "", false},
		{"oci://reg.example/Apps:v1", "", false},
		{"oci://", "", false},
	} {
		r, err := registry.ParseRef(c.in)
		if (err == nil) != c.ok || c.ok && r.String() != c.want {
			t.Errorf("ParseRef(%q) = %v, %v; want %q, ok %v", c.in, r, err, c.want, c.ok)
		}
	}
}

// countingTransport counts the body bytes of every answer, and the blob uploads started.
type countingTransport struct {
	rt      http.RoundTripper
	n       atomic.Int64
	uploads atomic.Int64 // blob uploads started
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, "/blobs/uploads/") {
		c.uploads.Add(1)
	}
	resp, err := c.rt.RoundTrip(req)
	if err == nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, n: &c.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
