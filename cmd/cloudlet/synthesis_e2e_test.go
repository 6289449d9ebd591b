package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/synthesis"
)

// testSynthesis synthesises the overlay from loopback HTTP origins that emulate a link and
// misbehave, as users' origins do.
func testSynthesis(t *testing.T, ctx context.Context, home, id, file, applied string) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	baseDir := filepath.Join(home, "bases", id)
	synth := func(url, cache string, extra ...string) result {
		port := testguest.FreePort(t)
		args := append([]string{"synthesis", id, url, "--cache", cache,
			"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", port), "--probe", fmt.Sprintf("http://127.0.0.1:%d/", port),
			"--probe-timeout", "2m", "--exit-when-complete"}, extra...)
		return run(t, ctx, home, args...)
	}

	t.Run("shaped link", func(t *testing.T) {
		s := synthesis.NewShapedServer(data)
		defer s.Close()
		s.Shape(10*time.Millisecond, 38e6/8)
		cache := t.TempDir()
		r := synth(s.URL(), cache)
		if r.code != 0 || !strings.Contains(r.stdout, "first_answer") || !strings.Contains(r.stdout, "complete") {
			t.Fatalf("synthesis: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		t.Logf("timeline:\n%s", r.stdout)
		checkCache(t, cache, applied, baseDir)

		// A re-run on the same cache fetches the index again, and no blob.
		before := s.Bytes.Load()
		if r := synth(s.URL(), cache); r.code != 0 {
			t.Fatalf("re-run: %s", r.stderr)
		}
		if again := s.Bytes.Load() - before; again > int64(overlay.DefaultPrefix)+16<<10 {
			t.Fatalf("re-run on a complete cache fetched %d bytes", again)
		}
	})
	t.Run("three dropped connections", func(t *testing.T) {
		s := synthesis.NewShapedServer(data)
		defer s.Close()
		s.DropNext(3)
		cache := t.TempDir()
		if r := synth(s.URL(), cache); r.code != 0 {
			t.Fatalf("synthesis through drops: exit %d\n%s", r.code, r.stderr)
		}
		checkCache(t, cache, applied, baseDir)
	})
	t.Run("changed file", func(t *testing.T) {
		s := synthesis.NewShapedServer(data)
		defer s.Close()
		s.ChangeBefore(2) // after the size probe pinned the ETag; the small test overlay needs no other request
		r := synth(s.URL(), t.TempDir(), "--no-early-start")
		if r.code == 0 || !strings.Contains(r.stderr, "changed on the server") {
			t.Fatalf("changed file: exit %d\n%s", r.code, r.stderr)
		}
		if strings.Contains(r.stdout, "resumed") {
			t.Fatal("the VM resumed on a changed overlay")
		}
	})
	t.Run("corrupt blob", func(t *testing.T) {
		bad := bytes.Clone(data)
		bad[len(bad)-50] ^= 0x01
		s := synthesis.NewShapedServer(bad)
		defer s.Close()
		r := synth(s.URL(), t.TempDir())
		if r.code == 0 || !strings.Contains(r.stderr, "digest") || !strings.Contains(r.stderr, "paused") {
			t.Fatalf("corrupt blob: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("profile", func(t *testing.T) {
		profiled := filepath.Join(t.TempDir(), "profiled.overlay")
		port := testguest.FreePort(t)
		r := run(t, ctx, home, "overlay", "profile", file, "--base", id, "-o", profiled,
			"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", port), "--probe", fmt.Sprintf("http://127.0.0.1:%d/", port), "--tail", "200ms")
		if r.code != 0 || !strings.Contains(r.stderr, "working set:") {
			t.Fatalf("overlay profile: exit %d\n%s", r.code, r.stderr)
		}
		if info := run(t, ctx, home, "overlay", "info", profiled); !strings.Contains(info.stdout, "working set: ") || strings.Contains(info.stdout, "not profiled") {
			t.Fatalf("profiled overlay info:\n%s", info.stdout)
		}
		if r := run(t, ctx, home, "overlay", "verify", profiled, "--base", id); r.code != 0 {
			t.Fatalf("profiled overlay does not verify: %s", r.stderr)
		}
		// The profiled overlay rebuilds the same images.
		s := synthesis.NewShapedServer(mustRead(t, profiled))
		defer s.Close()
		cache := t.TempDir()
		if r := synth(s.URL(), cache); r.code != 0 {
			t.Fatalf("synthesis of the profiled overlay: %s", r.stderr)
		}
		checkCache(t, cache, applied, baseDir)
	})
	t.Run("bad source", func(t *testing.T) {
		r := run(t, ctx, home, "synthesis", id, "http://127.0.0.1:1/overlay", "--exit-when-complete", "--retry-for", "2s")
		if r.code == 0 || !strings.Contains(r.stderr, "refused") {
			t.Fatalf("dead origin: %s", r.stderr)
		}
	})
}

// checkCache compares the materialised cache with 'overlay apply': every chunk delivered from
// the overlay equals the applied image, every chunk left to the base equals the base, and
// chunks the running VM wrote itself are skipped.
func checkCache(t *testing.T, cache, applied, baseDir string) {
	t.Helper()
	for _, im := range []struct{ name, file string }{{"disk", base.DiskFile}, {"memory", base.MemoryFile}} {
		presence, err := os.ReadFile(filepath.Join(cache, im.name+".presence"))
		if err != nil {
			t.Fatal(err)
		}
		cached, _ := os.ReadFile(filepath.Join(cache, im.name+".cache"))
		want, _ := os.ReadFile(filepath.Join(applied, im.file))
		baseImg, _ := os.ReadFile(filepath.Join(baseDir, im.file))
		delivered := 0
		for c, p := range presence {
			lo, hi := c*chunk.Size, min((c+1)*chunk.Size, len(want))
			switch p {
			case 1:
				delivered++
				if !bytes.Equal(cached[lo:hi], want[lo:hi]) {
					t.Fatalf("%s chunk %d: cache differs from overlay apply", im.name, c)
				}
			case 0:
				if !bytes.Equal(want[lo:hi], baseImg[lo:hi]) && !bytes.Equal(want[lo:hi], make([]byte, hi-lo)) {
					t.Fatalf("%s chunk %d: the overlay changes it, but it was never delivered", im.name, c)
				}
			}
		}
		if im.name == "memory" && delivered == 0 {
			t.Fatalf("no memory chunk was delivered")
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
