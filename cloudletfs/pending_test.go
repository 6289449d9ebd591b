package cloudletfs_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
)

// TestPendingMountServes: a mount made from layouts answers stat at once; reads, writes,
// fsyncs, opens of stats/ and streams/ and a child's private mmap, all started before Serve,
// wait, and then proceed against the served FS: the base's bytes, a planned chunk's, and the
// write landed in the FS.
func TestPendingMountServes(t *testing.T) {
	f := newFixture(t, t.TempDir(), 21)
	m := mountPending(t, f.layouts())
	for _, l := range f.layouts() {
		if st := statWithin(t, m.path(l.Name, "image")); st.Size() != l.Size {
			t.Fatalf("%s/image: size %d, want %d", l.Name, st.Size(), l.Size)
		}
	}
	disk, memory := m.path("disk", "image"), m.path("memory", "image")
	lo := func(name string, c int64) []byte { return f.want[name][c*chunk.Size : (c+1)*chunk.Size] }
	written := make([]byte, chunk.Size)
	rand.New(rand.NewSource(22)).Read(written)
	const writtenChunk = 66 // pending in the plan: a whole write needs no fetch
	tests := []struct {
		name string
		run  func() error
	}{
		{"read of a base chunk", func() error { return readChunk(memory, 4, lo("memory", 4)) }},
		{"read of a planned chunk", func() error { return readChunk(disk, 2, lo("disk", 2)) }},
		{"write", func() error {
			file, err := os.OpenFile(disk, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer file.Close()
			_, err = file.WriteAt(written, writtenChunk*chunk.Size)
			return err
		}},
		{"fsync", func() error {
			file, err := os.OpenFile(memory, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer file.Close()
			return file.Sync()
		}},
		{"open of stats/memory", func() error {
			b, err := os.ReadFile(m.path("stats", "memory"))
			if err == nil && !strings.Contains(string(b), "chunks_total 128\n") {
				err = fmt.Errorf("stats/memory: %q, want chunks_total 128", b)
			}
			return err
		}},
		{"open of streams/chunks_fetched", func() error {
			file, err := os.Open(m.path("streams", "chunks_fetched"))
			if err == nil {
				file.Close()
			}
			return err
		}},
		{"private mmap in a child", func() error {
			out, err := child(t, "mmap-private", memory+",6,7").CombinedOutput()
			if err != nil {
				return fmt.Errorf("child: %v: %s", err, out)
			}
			sums := strings.Fields(string(out))
			for i, p := range []int64{6, 7} {
				want := sha256.Sum256(lo("memory", p))
				if i >= len(sums) || sums[i] != hex.EncodeToString(want[:]) {
					return fmt.Errorf("page %d differs from the model (child: %q)", p, out)
				}
			}
			return nil
		}},
	}
	var reqs []request
	for _, tc := range tests {
		reqs = append(reqs, start(tc.name, tc.run))
	}
	checkWaiting(t, reqs)
	m.serve(t, f)
	for _, r := range reqs {
		if err := outcome(t, r, 20*time.Second); err != nil {
			t.Errorf("%s: %v", r.name, err)
		}
	}
	got := make([]byte, chunk.Size)
	if _, err := m.fsys.Image("disk").ReadAt(context.Background(), got, writtenChunk*chunk.Size); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "the chunk written before Serve, in the FS", got, written, writtenChunk*chunk.Size)
}

// TestPendingUnmount: unmounting a mount that was never served fails the requests waiting
// for its FS with EIO, returns promptly and leaves nothing mounted.
func TestPendingUnmount(t *testing.T) {
	f := newFixture(t, t.TempDir(), 23)
	m := mountPending(t, f.layouts())
	reqs := []request{
		start("read", func() error { return readChunk(m.path("disk", "image"), 0, nil) }),
		start("open of stats/disk", func() error { _, err := os.ReadFile(m.path("stats", "disk")); return err }),
	}
	checkWaiting(t, reqs)
	begin := time.Now()
	unmounted := start("unmount", m.mnt.Unmount)
	if err := outcome(t, unmounted, 10*time.Second); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("unmount took %v, want at most 2 s", d)
	}
	for _, r := range reqs {
		if err := outcome(t, r, 5*time.Second); !errors.Is(err, syscall.EIO) {
			t.Errorf("%s: %v, want EIO", r.name, err)
		}
	}
	if mounted, err := mountinfo.Mounted(m.dir); err != nil || mounted {
		t.Errorf("after unmount: mounted %v (%v), want nothing at %s", mounted, err, m.dir)
	}
}

// TestServeRefuses: an FS whose images differ from the mount's layout, or that has files, is
// refused with an error naming the difference, and the mount stays pending: a read waits on,
// and the right FS is served after. Serving twice, or after the unmount, is an error.
func TestServeRefuses(t *testing.T) {
	f := newFixture(t, t.TempDir(), 24)
	m := mountPending(t, f.layouts())
	read := start("read", func() error { return readChunk(m.path("disk", "image"), 2, f.want["disk"][2*chunk.Size:3*chunk.Size]) })
	disk, memory := imageSizes["disk"], imageSizes["memory"]
	tests := []struct {
		name   string
		images []cloudletfs.ImageConfig
		files  []cloudletfs.File
		want   string
	}{
		{"other size", []cloudletfs.ImageConfig{{Name: "disk", Size: disk}, {Name: "memory", Size: memory + 1}},
			nil, fmt.Sprintf("image 1: got memory of %d bytes, want memory of %d bytes", memory+1, memory)},
		{"other name", []cloudletfs.ImageConfig{{Name: "root", Size: disk}, {Name: "memory", Size: memory}},
			nil, fmt.Sprintf("image 0: got root of %d bytes, want disk of %d bytes", disk, disk)},
		{"other order", []cloudletfs.ImageConfig{{Name: "memory", Size: memory}, {Name: "disk", Size: disk}},
			nil, fmt.Sprintf("image 0: got memory of %d bytes, want disk of %d bytes", memory, disk)},
		{"fewer images", []cloudletfs.ImageConfig{{Name: "disk", Size: disk}},
			nil, fmt.Sprintf("image 1: got none (the FS has 1 images), want memory of %d bytes", memory)},
		{"more images", []cloudletfs.ImageConfig{{Name: "disk", Size: disk}, {Name: "memory", Size: memory}, {Name: "extra", Size: 4096}},
			nil, "image 2: got extra of 4096 bytes, want none (the mount has 2 images)"},
		{"files", []cloudletfs.ImageConfig{{Name: "disk", Size: disk}, {Name: "memory", Size: memory}},
			[]cloudletfs.File{{Name: "devstate", Data: []byte("x")}}, "the FS has 1 files (devstate first)"},
	}
	for _, tc := range tests {
		fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: t.TempDir(), Images: tc.images, Files: tc.files})
		if err != nil {
			t.Fatalf("%s: open: %v", tc.name, err)
		}
		err = m.mnt.Serve(fsys)
		fsys.Close()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: serve: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	checkWaiting(t, []request{read})
	m.serve(t, f)
	if err := outcome(t, read, 10*time.Second); err != nil {
		t.Fatalf("read after the right FS was served: %v", err)
	}

	again, err := cloudletfs.Open(cloudletfs.Config{Dir: t.TempDir(), Images: f.configs})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if err := m.mnt.Serve(again); err == nil || !strings.Contains(err.Error(), "already has its FS") {
		t.Errorf("second serve: %v, want an error", err)
	}
	if err := m.mnt.Unmount(); err != nil {
		t.Fatal(err)
	}
	late := mountPending(t, f.layouts())
	if err := late.mnt.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := late.mnt.Serve(again); err == nil || !strings.Contains(err.Error(), "unmounted") {
		t.Errorf("serve after unmount: %v, want an error", err)
	}
}

// TestMountPendingRefusesLayouts: what Open refuses of a name or size, MountPending refuses
// too, before mounting anything.
func TestMountPendingRefusesLayouts(t *testing.T) {
	tests := []struct {
		name    string
		layouts []cloudletfs.Layout
		want    string
	}{
		{"empty name", []cloudletfs.Layout{{Name: "", Size: 1}}, `bad or repeated image name ""`},
		{"a path", []cloudletfs.Layout{{Name: "a/b", Size: 1}}, `bad or repeated image name "a/b"`},
		{"a dot", []cloudletfs.Layout{{Name: "..", Size: 1}}, `bad or repeated image name ".."`},
		{"the stats directory", []cloudletfs.Layout{{Name: "stats", Size: 1}}, `bad or repeated image name "stats"`},
		{"repeated", []cloudletfs.Layout{{Name: "disk", Size: 1}, {Name: "disk", Size: 2}}, `bad or repeated image name "disk"`},
		{"zero size", []cloudletfs.Layout{{Name: "disk", Size: 0}}, "image disk: size 0"},
		{"negative size", []cloudletfs.Layout{{Name: "disk", Size: -4096}}, "image disk: size -4096"},
	}
	for _, tc := range tests {
		dir := t.TempDir()
		mnt, err := cloudletfs.MountPending(dir, tc.layouts, cloudletfs.MountOptions{})
		if err == nil {
			mnt.Unmount()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
		if mounted, _ := mountinfo.Mounted(dir); mounted {
			t.Errorf("%s: something is mounted at %s", tc.name, dir)
		}
	}
}
