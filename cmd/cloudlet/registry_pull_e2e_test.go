package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/registry"
)

// TestBasePullStalls: 'base pull' from a registry that stops sending in the middle of a blob
// fails once the idle timeout (30 s) and --retry-for pass without a byte, naming the blob and
// the timeout, instead of waiting until interrupted.
func TestBasePullStalls(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	reg := registry.StartRegistry(t)
	src, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := base.CommitTiny(t, src, "tiny")
	if _, err := registry.PushBase(ctx, b, reg.Ref(t, "bases/tiny:1"), reg.Options(), nil); err != nil {
		t.Fatal(err)
	}
	digest := "sha256:" + b.Manifest.Files[base.MemoryFile].SHA256
	// At the start of the pull's second read of the blob: the stall brings no byte at all, so
	// one idle timeout ends the read (a stall after some bytes would count as progress).
	sp := reg.StartStallProxy(t, "/blobs/"+digest, 4<<20, -1)
	start := time.Now()
	r := run(t, ctx, t.TempDir(), "base", "pull", sp.Host+"/bases/tiny:1", "--retry-for", "1s",
		"--plain-http", "--registry-user", reg.Username, "--registry-password", reg.Password)
	took := time.Since(start)
	t.Logf("exit %d after %v: %s", r.code, took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
	for _, want := range []string{digest, "no data for 30s"} {
		if r.code == 0 || !strings.Contains(r.stderr, want) {
			t.Fatalf("exit %d, stderr %q; want a failure saying %q", r.code, r.stderr, want)
		}
	}
	if took > 45*time.Second {
		t.Fatalf("the pull gave up after %v, want soon after the 30 s idle timeout and 1 s of retries", took)
	}
}
