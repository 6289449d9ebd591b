package origin

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSpoolReadsAGrowingUpload: an Upload receives into a file in one place, a Spool reads it
// in another as it grows; a read of a range not there yet waits for it; an upload that stops
// growing fails the read after the idle time; a read beyond the size fails at once.
func TestSpoolReadsAGrowingUpload(t *testing.T) {
	data := testData(1 << 20)
	path := filepath.Join(t.TempDir(), "upload.overlay")
	up, err := NewUpload(path, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	sp, err := OpenSpool(path, int64(len(data)), 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	pr, pw := io.Pipe()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		up.Receive(pr)
	}()
	defer wg.Wait()
	defer pw.Close()

	ctx := context.Background()
	tail := make([]byte, 1000)
	got := make(chan error, 1)
	go func() { got <- sp.ReadAt(ctx, tail, int64(len(data))-1000) }()
	pw.Write(data[:len(data)/2])
	select {
	case err := <-got:
		t.Fatalf("a read of the tail returned before it arrived: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	head := make([]byte, 4096)
	if err := sp.ReadAt(ctx, head, 0); err != nil || !bytes.Equal(head, data[:4096]) {
		t.Fatalf("head: %v", err)
	}
	pw.Write(data[len(data)/2:])
	if err := <-got; err != nil || !bytes.Equal(tail, data[len(data)-1000:]) {
		t.Fatalf("tail: %v", err)
	}
	if err := sp.ReadAt(ctx, tail, int64(len(data))-999); err == nil || !strings.Contains(err.Error(), "beyond") {
		t.Fatalf("a read beyond the size: %v", err)
	}
}

func TestSpoolFailsWhenTheUploadStalls(t *testing.T) {
	path := filepath.Join(t.TempDir(), "upload.overlay")
	up, err := NewUpload(path, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	sp, err := OpenSpool(path, 1<<20, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	start := time.Now()
	err = sp.ReadAt(context.Background(), make([]byte, 10), 0)
	if err == nil || !strings.Contains(err.Error(), "broke off after 0 of 1048576 bytes") {
		t.Fatalf("a stalled upload: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the stall took %v to be noticed, want about 200ms", d)
	}
}
