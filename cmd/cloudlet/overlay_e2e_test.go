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
	"github.com/cloudlet/cloudlet/internal/testguest"
	"github.com/cloudlet/cloudlet/vm"
)

// testOverlay captures a customisation of the base (a new page, and a second HTTP app on
// another port), applies the overlay offline, checks the result byte for byte against the
// customised VM's images, and resumes it: the custom app answers.
// Its files go to dir, which outlives the subtest.
func testOverlay(t *testing.T, ctx context.Context, home, id, dir string) (file, applied string) {
	saved := filepath.Join(dir, "saved")
	file, applied = filepath.Join(dir, "app.overlay"), filepath.Join(dir, "applied")
	p80, p8080 := testguest.FreePort(t), testguest.FreePort(t)
	r := run(t, ctx, home, "overlay", "create", id,
		"--exec", "mkdir -p /www2 && echo custom-app > /www2/index.html",
		"--exec", "httpd -p 8080 -h /www2",
		"--exec", "echo new-page > /www/new.html",
		"--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:80", p80), "--hostfwd", fmt.Sprintf("tcp:127.0.0.1:%d-:8080", p8080),
		"--ready", fmt.Sprintf("http://127.0.0.1:%d/", p8080),
		"-o", file, "--save-images", saved)
	if r.code != 0 {
		t.Fatalf("overlay create: exit %d\n%s", r.code, r.stderr)
	}
	for _, want := range []string{"guest$ httpd -p 8080", "unique stored", "overlay file"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("overlay create output lacks %q:\n%s", want, r.stderr)
		}
	}
	if r := run(t, ctx, home, "overlay", "info", file); r.code != 0 || !strings.Contains(r.stdout, id) {
		t.Fatalf("overlay info: %s %s", r.stdout, r.stderr)
	}
	if r := run(t, ctx, home, "overlay", "verify", file, "--base", id[:10]); r.code != 0 {
		t.Fatalf("overlay verify: %s", r.stderr)
	}
	if r := run(t, ctx, home, "overlay", "apply", file, "--base", id, "--out", applied); r.code != 0 {
		t.Fatalf("overlay apply: %s", r.stderr)
	}
	for _, name := range []string{base.DiskFile, base.MemoryFile} {
		a, _ := os.ReadFile(filepath.Join(applied, name))
		s, _ := os.ReadFile(filepath.Join(saved, name))
		if len(a) == 0 || !bytes.Equal(a, s) {
			t.Fatalf("%s: the applied image differs from the customised VM's (%d vs %d bytes)", name, len(a), len(s))
		}
	}

	// The reconstruction runs: resume it, and the custom app and page answer.
	b, err := mustStore(t, home).Get(id)
	if err != nil {
		t.Fatal(err)
	}
	opts := b.VMOptions()
	opts.Disk = vm.Disk{Path: filepath.Join(applied, base.DiskFile)}
	opts.Memory = vm.Memory{Path: filepath.Join(applied, base.MemoryFile)}
	opts.KeepHugepageAdvice = true
	q80, q8080 := testguest.FreePort(t), testguest.FreePort(t)
	opts.Forwards = []vm.Forward{{Proto: "tcp", HostAddr: "127.0.0.1", HostPort: q80, GuestPort: 80}, {Proto: "tcp", HostAddr: "127.0.0.1", HostPort: q8080, GuestPort: 8080}}
	v, err := vm.Resume(ctx, opts, filepath.Join(applied, base.DevstateFile))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Kill()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, c := range []struct{ url, want string }{
		{fmt.Sprintf("http://127.0.0.1:%d/", q8080), "custom-app"},
		{fmt.Sprintf("http://127.0.0.1:%d/new.html", q80), "new-page"},
	} {
		if body := waitBody(t, wctx, c.url); !strings.Contains(body, c.want) {
			t.Fatalf("GET %s: %q, want %q", c.url, body, c.want)
		}
	}

	// A failing command stops the capture and is named, with its output.
	r = run(t, ctx, home, "overlay", "create", id, "--exec", "echo about-to-fail; false", "-o", filepath.Join(dir, "bad.overlay"))
	if r.code == 0 || !strings.Contains(r.stderr, `"echo about-to-fail; false" failed with exit status 1`) || !strings.Contains(r.stderr, "about-to-fail") {
		t.Fatalf("failing --exec: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.overlay")); err == nil {
		t.Fatal("a failed capture left an overlay file")
	}
	// An overlay checked against the wrong base, and a damaged one, are refused by name.
	if r := run(t, ctx, home, "overlay", "verify", file, "--base", strings.Repeat("0", 64)); r.code == 0 || !strings.Contains(r.stderr, "no such base") {
		t.Fatalf("verify against a missing base: %s", r.stderr)
	}
	data, _ := os.ReadFile(file)
	data[len(data)-100] ^= 0xff
	os.WriteFile(filepath.Join(dir, "damaged.overlay"), data, 0o644)
	if r := run(t, ctx, home, "overlay", "verify", filepath.Join(dir, "damaged.overlay"), "--base", id); r.code == 0 || !strings.Contains(r.stderr, "digest") {
		t.Fatalf("verify of a damaged overlay: %s", r.stderr)
	}
	return file, applied
}

func mustStore(t *testing.T, home string) *base.Store {
	t.Helper()
	s, err := base.Open(home)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func waitBody(t *testing.T, ctx context.Context, url string) string {
	t.Helper()
	for {
		r, err := httpGetBody(ctx, url)
		if err == nil {
			return r
		}
		select {
		case <-ctx.Done():
			t.Fatalf("GET %s: %v", url, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
