package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/synthesis/origin"
)

// testReadOnlyLoop: with --read-only, writes are refused (EROFS), and a read-only loop mount
// of disk/image reads the file the overlay added while the overlay's chunks are still pending.
func testReadOnlyLoop(t *testing.T, ctx context.Context, home, id string, data []byte) {
	s := origin.NewShapedServer(data)
	defer s.Close()
	defer s.CloseClientConnections()
	s.Shape(5*time.Millisecond, 128<<10) // 1 Mbit/s: minutes for the whole overlay
	mp := t.TempDir()
	m := startOverlayMount(t, ctx, home, id, mp, "--overlay", s.URL(), "--read-only")
	image := filepath.Join(mp, "disk", "image")
	if f, err := os.OpenFile(image, os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		if err == nil {
			f.Close()
		}
		t.Fatalf("open disk/image for writing on a --read-only mount: %v, want EROFS", err)
	}
	out, err := exec.CommandContext(ctx, "losetup", "--read-only", "--find", "--show", image).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	defer func() {
		if out, err := exec.Command("losetup", "--detach", loop).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", loop, err, out)
		}
	}()
	fsDir := t.TempDir()
	// noload: the snapshot's journal is not replayed (that would write); what the guest synced
	// is in place.
	if out, err := exec.CommandContext(ctx, "mount", "-t", "ext4", "-o", "ro,noload", loop, fsDir).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v: %s\n%s", loop, err, out, m.stderr)
	}
	defer func() {
		if out, err := exec.Command("umount", fsDir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", fsDir, err, out)
		}
	}()
	got, err := os.ReadFile(filepath.Join(fsDir, "www2", "index.html"))
	if err != nil || string(got) != "custom-app\n" {
		t.Fatalf("www2/index.html through the loop mount: %q, %v", got, err)
	}
	fetched, pending := s.Bytes.Load(), chunksPending(t, mp)
	if m.said("complete") || pending == 0 {
		t.Fatalf("the overlay was complete before the read (%d of %d bytes fetched)", fetched, len(data))
	}
	t.Logf("read the overlay's file through a read-only loop mount with %d of %d overlay bytes fetched, %d chunks pending", fetched, len(data), pending)
}

// testFailedFetch: when the fetch gives up (a corrupt blob, an origin that is gone), the mount
// says so, reads of chunks that did not arrive fail with EIO at once, and the log names why.
func testFailedFetch(t *testing.T, ctx context.Context, home, id string, data []byte) {
	corrupt := bytes.Clone(data)
	corrupt[len(corrupt)-50] ^= 0x01
	for _, tc := range []struct {
		name  string
		data  []byte
		shape func(*origin.ShapedServer)
		// kill ends the origin once the mount serves; nil leaves it up.
		kill bool
		want string
	}{
		{name: "corrupt blob", data: corrupt, want: "digest"},
		{name: "dead origin", data: data, shape: func(s *origin.ShapedServer) { s.Shape(5*time.Millisecond, 64<<10) }, kill: true, want: "fetch overlay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := origin.NewShapedServer(tc.data)
			defer s.Close()
			if tc.shape != nil {
				tc.shape(s)
			}
			mp := t.TempDir()
			m := startOverlayMount(t, ctx, home, id, mp, "--overlay", s.URL(), "--retry-for", "2s")
			start := time.Now()
			if tc.kill {
				s.CloseClientConnections()
				s.Close()
			}
			line := m.next(t, 2*time.Minute)
			t.Logf("%q after %v", line, time.Since(start).Round(time.Millisecond))
			if !strings.HasPrefix(line, "failed: ") || !strings.Contains(line, tc.want) {
				t.Fatalf("mount said %q, want a failure mentioning %q\n%s", line, tc.want, m.stderr)
			}
			// Every pending chunk now fails at once; at least one image has one.
			eio := 0
			for _, name := range []string{"disk", "memory"} {
				done := make(chan error, 1)
				go func() {
					_, err := os.ReadFile(filepath.Join(mp, name, "image"))
					done <- err
				}()
				select {
				case err := <-done:
					if err != nil && !errors.Is(err, syscall.EIO) {
						t.Fatalf("read %s/image: %v, want EIO or success", name, err)
					}
					if err != nil {
						eio++
					}
				case <-time.After(time.Minute):
					t.Fatalf("read of %s/image still waits a minute after the fetch failed", name)
				}
			}
			if eio == 0 {
				t.Fatal("both images read whole after a failed fetch")
			}
			if logs := m.stderr.String(); !strings.Contains(logs, "will not come") || !strings.Contains(logs, tc.want) {
				t.Fatalf("the mount's log does not say why reads fail:\n%s", logs)
			}
		})
	}
}

// chunksPending sums chunks_pending over the mount's stats/ files.
func chunksPending(t *testing.T, mp string) int64 {
	t.Helper()
	var sum int64
	for _, name := range []string{"disk", "memory"} {
		for _, line := range strings.Split(string(mustRead(t, filepath.Join(mp, "stats", name))), "\n") {
			var n int64
			if _, err := fmt.Sscanf(line, "chunks_pending %d", &n); err == nil {
				sum += n
			}
		}
	}
	return sum
}
