package cloudletfs_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/internal/testguest"
)

// stillWaiting is how long a request must stay blocked before Serve to count as waiting.
const stillWaiting = 200 * time.Millisecond

// pendingMount is a test mount made before its FS.
type pendingMount struct {
	mnt  *cloudletfs.Mount
	dir  string
	fsys *cloudletfs.FS // served, closed after the unmount
}

func (m *pendingMount) path(parts ...string) string {
	return filepath.Join(append([]string{m.dir}, parts...)...)
}

// mountPending mounts the layouts at a new mount point; cleanup unmounts it (unless the test
// did) and then closes the FS it was served, if any.
func mountPending(t *testing.T, layouts []cloudletfs.Layout) *pendingMount {
	t.Helper()
	testguest.RequireFUSE(t)
	dir := t.TempDir()
	mnt, err := cloudletfs.MountPending(dir, layouts, cloudletfs.MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := &pendingMount{mnt: mnt, dir: dir}
	t.Cleanup(func() {
		if mounted, _ := mountinfo.Mounted(dir); mounted {
			if err := mnt.Unmount(); err != nil {
				t.Errorf("unmount: %v", err)
			}
		}
		if m.fsys != nil {
			if err := m.fsys.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		}
	})
	return m
}

// serve opens the fixture's FS over a new cache and serves the mount with it.
func (m *pendingMount) serve(t *testing.T, f *fixture) *cloudletfs.MemSource {
	t.Helper()
	src := &cloudletfs.MemSource{Data: f.want}
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: t.TempDir(), Images: f.configs, Demander: src, Identity: "fixture"})
	if err != nil {
		t.Fatal(err)
	}
	src.Attach(fsys)
	if err := m.mnt.Serve(fsys); err != nil {
		fsys.Close()
		t.Fatalf("serve: %v", err)
	}
	m.fsys = fsys
	return src
}

func (f *fixture) layouts() []cloudletfs.Layout {
	var out []cloudletfs.Layout
	for _, c := range f.configs {
		out = append(out, cloudletfs.Layout{Name: c.Name, Size: c.Size})
	}
	return out
}

// request is one thing done on a mount in the background; done receives its outcome.
type request struct {
	name string
	done chan error
}

func start(name string, run func() error) request {
	r := request{name: name, done: make(chan error, 1)}
	go func() { r.done <- run() }()
	return r
}

// checkWaiting fails the test for every request that has returned.
func checkWaiting(t *testing.T, reqs []request) {
	t.Helper()
	time.Sleep(stillWaiting)
	for _, r := range reqs {
		select {
		case err := <-r.done:
			t.Fatalf("%s returned before Serve (%v), want it to wait", r.name, err)
		default:
		}
	}
}

// outcome waits for a request's outcome, for at most d.
func outcome(t *testing.T, r request, d time.Duration) error {
	t.Helper()
	select {
	case err := <-r.done:
		return err
	case <-time.After(d):
		t.Fatalf("%s still waiting after %v", r.name, d)
		return nil
	}
}

// readChunk reads chunk c of an image through the mount and compares it with want.
func readChunk(path string, c int64, want []byte) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	buf := make([]byte, chunk.Size)
	if _, err := file.ReadAt(buf, c*chunk.Size); err != nil {
		return err
	}
	if !bytes.Equal(buf, want) {
		return fmt.Errorf("chunk %d: the bytes differ from the model", c)
	}
	return nil
}

// statWithin stats path, failing the test if that takes longer than two seconds.
func statWithin(t *testing.T, path string) os.FileInfo {
	t.Helper()
	type result struct {
		st  os.FileInfo
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := os.Stat(path)
		done <- result{st, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.st
	case <-time.After(2 * time.Second):
		t.Fatalf("stat %s still waiting after 2 s, want an answer at once", path)
		return nil
	}
}

// requestChild makes one request of the given kind on path: "open" (and read), "write" (one
// byte at the start) or "fsync".
func requestChild(kind, path string) error {
	switch kind {
	case "open":
		_, err := os.ReadFile(path)
		return err
	case "write", "fsync":
		file, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer file.Close()
		if kind == "fsync" {
			return file.Sync()
		}
		_, err = file.WriteAt([]byte{1}, 0)
		return err
	}
	return fmt.Errorf("unknown request %q", kind)
}

// TestPendingWaitInterrupted: a request waiting for the FS ends when its caller is killed
// (the kernel interrupts it, go-fuse cancels its context). The kernel holds a killed process
// until the server answers a request already sent to it, so the child exits only if the
// wait gave up.
func TestPendingWaitInterrupted(t *testing.T) {
	f := newFixture(t, t.TempDir(), 25)
	m := mountPending(t, f.layouts())
	tests := []struct{ kind, path string }{
		{"open", m.path("stats", "disk")},
		{"open", m.path("streams", "io")},
		{"write", m.path("disk", "image")},
		{"fsync", m.path("memory", "image")},
	}
	for _, tc := range tests {
		cmd := child(t, "request", tc.kind+","+tc.path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := start(tc.kind+" "+tc.path, cmd.Wait)
		checkWaiting(t, []request{exited})
		cmd.Process.Kill()
		select {
		case <-exited.done:
		case <-time.After(5 * time.Second):
			m.mnt.Unmount() // fails the wait, so that the child can be reaped
			<-exited.done
			t.Fatalf("%s: the killed child was still blocked after 5 s: its wait ignored the interrupt", exited.name)
		}
	}
}
