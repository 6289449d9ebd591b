package cloudletfs_test

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/internal/testguest"
)

// TestFilesServed: Config.Files appear at the root with their content and size, read-only;
// names that are not one plain name, or that an image or stats/ takes, are refused.
func TestFilesServed(t *testing.T) {
	testguest.RequireFUSE(t)
	f := newFixture(t, t.TempDir(), 20)
	big := bytes.Repeat([]byte("devstate"), 100_000) // more than one FUSE read
	files := []cloudletfs.File{{Name: "devstate", Data: big}, {Name: "vm.json", Data: []byte(`{"cpus":1}`)}, {Name: "empty"}}
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: t.TempDir(), Images: f.configs, Identity: "files", Files: files})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	mp := t.TempDir()
	mnt, err := fsys.Mount(mp, cloudletfs.MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer mnt.Unmount()
	for _, file := range files {
		path := mp + "/" + file.Name
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, file.Data) {
			t.Fatalf("%s: read %d bytes (%v), want %d", file.Name, len(got), err, len(file.Data))
		}
		st, err := os.Stat(path)
		if err != nil || st.Size() != int64(len(file.Data)) || st.Mode().Perm() != 0o400 {
			t.Fatalf("%s: stat %v (%v), want size %d, mode 0400", file.Name, st, err, len(file.Data))
		}
		if w, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			w.Close()
			t.Fatalf("%s: opened for writing", file.Name)
		}
	}

	for _, tc := range []struct {
		name string
		file cloudletfs.File
	}{
		{"empty name", cloudletfs.File{Name: ""}},
		{"dot dot", cloudletfs.File{Name: ".."}},
		{"a path", cloudletfs.File{Name: "a/b"}},
		{"an image's name", cloudletfs.File{Name: "disk"}},
		{"stats", cloudletfs.File{Name: "stats"}},
		{"twice", cloudletfs.File{Name: "vm.json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cloudletfs.Open(cloudletfs.Config{Dir: t.TempDir(), Images: f.configs,
				Files: []cloudletfs.File{{Name: "vm.json"}, tc.file}})
			if err == nil || !strings.Contains(err.Error(), "file name") {
				t.Fatalf("file %q: %v, want a refused file name", tc.file.Name, err)
			}
		})
	}
}

// TestReadOnlyMount: a read-only mount serves reads, pending chunks included, and refuses
// every write with EROFS; nothing reaches the cache.
func TestReadOnlyMount(t *testing.T) {
	f := newFixture(t, t.TempDir(), 21)
	m := f.mount(t, t.TempDir(), nil, cloudletfs.MountOptions{ReadOnly: true})
	path := m.path("disk", "image")
	got := make([]byte, 4*chunk.Size)
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if _, err := file.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "read-only read", got, f.want["disk"][:4*chunk.Size], 0)
	for _, flag := range []int{os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_TRUNC} {
		w, err := os.OpenFile(path, flag, 0)
		if err == nil {
			w.Close()
		}
		if !errors.Is(err, syscall.EROFS) {
			t.Fatalf("open with flags %#x: %v, want EROFS", flag, err)
		}
	}
	if s := m.fs.Image("disk").Stats(); s.BytesWritten != 0 {
		t.Fatalf("%d bytes written through a read-only mount", s.BytesWritten)
	}
}

// syncBuffer is a log destination that the FUSE server's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestFailEndsPendingReads: after Fail, a reader blocked on a pending chunk and every later
// reader of one gets EIO at once, and the log names the chunk and the cause; chunks that were
// delivered, base and zero chunks stay readable.
func TestFailEndsPendingReads(t *testing.T) {
	f := newFixture(t, t.TempDir(), 22)
	src := &cloudletfs.MemSource{}
	var logs syncBuffer
	// No readahead: each read asks for its own chunk only.
	m := f.mount(t, t.TempDir(), src, cloudletfs.MountOptions{MaxReadAhead: 4096, Log: log.New(&logs, "", 0)})
	path := m.path("memory", "image")
	read := func(c int64) ([]byte, error) {
		file, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer file.Close()
		buf := make([]byte, chunk.Size)
		_, err = file.ReadAt(buf, c*chunk.Size)
		return buf, err
	}
	// Chunk 2 is delivered before the failure; later demands are held and never answered.
	if _, err := read(2); err != nil {
		t.Fatal(err)
	}
	src.Hold = true // no delivery runs now: chunk 2 came and went
	blocked := make(chan error, 1)
	go func() {
		_, err := read(11)
		blocked <- err
	}()
	eventually(t, 5*time.Second, "the demand of chunk 11", func() bool { return src.Demands("memory", 11) > 0 })
	select {
	case err := <-blocked:
		t.Fatalf("read of a held chunk returned before Fail: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	cause := errors.New("fetch overlay: blob 7: digest mismatch")
	m.fs.Fail(cause)
	select {
	case err := <-blocked:
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("blocked reader: %v, want EIO", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked reader still waits 5 s after Fail")
	}
	for _, tc := range []struct {
		c    int64
		want error // nil: readable, with the model's bytes
	}{
		{0, nil},          // base
		{1, nil},          // zero
		{2, nil},          // delivered before the failure
		{14, syscall.EIO}, // pending, never demanded before
		{3, syscall.EIO},  // pending, demanded before
	} {
		got, err := read(tc.c)
		if tc.want != nil {
			if !errors.Is(err, tc.want) {
				t.Errorf("chunk %d: %v, want %v", tc.c, err, tc.want)
			}
			continue
		}
		if err != nil {
			t.Fatalf("chunk %d: %v", tc.c, err)
		}
		checkBytes(t, fmt.Sprintf("chunk %d after Fail", tc.c), got, f.want["memory"][tc.c*chunk.Size:(tc.c+1)*chunk.Size], tc.c*chunk.Size)
	}
	if want := "image memory: chunk 14 will not come: " + cause.Error(); !strings.Contains(logs.String(), want) {
		t.Fatalf("log lacks %q:\n%s", want, logs.String())
	}
}
