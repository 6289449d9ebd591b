package registry_test

import (
	"bytes"
	"context"
	mrand "math/rand"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
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
			sp := reg.StartStallProxy(t, c.path, c.stallAt, c.stalls)
			ref, err := registry.ParseRef(sp.Host + "/bases/random:1")
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
			if !sp.Started(stallAt) {
				t.Fatalf("no request resumed the blob at byte %d ", stallAt)
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

// A registry that answers range requests with whole blobs: a pull that allows the full
// download (as the CLI does) gets the base; one that does not says why it failed.
func TestPullWithoutRanges(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg := registry.StartRegistry(t)
	mem := make([]byte, 16<<20)
	mrand.New(mrand.NewSource(2)).Read(mem)
	b := base.CommitTinyMemory(t, newStore(t), "random", func(*vm.Config) {}, mem)
	if _, err := registry.PushBase(ctx, b, reg.Ref(t, "bases/random:1"), reg.Options(), nil); err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: reg.Host})
	direct := rp.Director
	rp.Director = func(req *http.Request) {
		direct(req)
		req.Header.Del("Range")
	}
	srv := httptest.NewServer(rp)
	defer srv.Close()
	ref, err := registry.ParseRef(strings.TrimPrefix(srv.URL, "http://") + "/bases/random:1")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		full    bool
		wantErr string
	}{
		{"full download", true, ""},
		{"ranges only", false, "206 Partial Content"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dst := newStore(t)
			open := origin.RegistryBlobs(origin.HTTPOptions{OCI: origin.OCIOptions{Registry: reg.Options(), FullDownload: c.full, SpoolDir: t.TempDir()}})
			got, _, err := registry.PullBase(ctx, dst, ref, reg.Options(), open, nil)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("pull: %v; want an error saying %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if data, err := os.ReadFile(got.Path(base.MemoryFile)); err != nil || got.ID != b.ID || !bytes.Equal(data, mem) {
				t.Fatalf("pulled base %s (%v), want %s with the memory image pushed", got.ID, err, b.ID)
			}
		})
	}
}
