package synthesis

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
)

// gatedOrigin serves a file from memory, streaming, but holds every byte from gate on until
// open is closed.
type gatedOrigin struct {
	b    []byte
	gate int64
	open chan struct{}
}

func (o *gatedOrigin) Size() int64    { return int64(len(o.b)) }
func (o *gatedOrigin) String() string { return "gated origin" }
func (o *gatedOrigin) Close() error   { return nil }
func (o *gatedOrigin) ReadAt(ctx context.Context, p []byte, off int64) error {
	return o.ReadAtProgress(ctx, p, off, func(int) {})
}

func (o *gatedOrigin) ReadAtProgress(ctx context.Context, p []byte, off int64, progress func(n int)) error {
	if off < 0 || off+int64(len(p)) > int64(len(o.b)) {
		return fmt.Errorf("read of %d bytes at %d outside the file", len(p), off)
	}
	if n := min(int64(len(p)), max(o.gate-off, 0)); n > 0 {
		copy(p, o.b[off:off+n])
		progress(int(n))
	}
	if off+int64(len(p)) <= o.gate {
		return nil
	}
	select {
	case <-o.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	copy(p, o.b[off:])
	progress(len(p))
	return nil
}

// overlayWithTable is a test overlay of n chunks, ws of them the working set, for a tiny base:
// the base, the file, and where its digest table starts.
func overlayWithTable(t *testing.T, n, ws int) (*base.Base, []byte, int64) {
	t.Helper()
	store, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := base.CommitTiny(t, store, "tiny")
	file, err := os.ReadFile(testOverlay(t, b, n, ws))
	if err != nil {
		t.Fatal(err)
	}
	r, err := overlay.Open(bytes.NewReader(file), int64(len(file)), overlay.Expect{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	off, _ := r.DigestTableRange()
	return b, file, off
}

// TestWorkingSetBeforeDigests: the working set reaches the VM's images while the chunk digest
// table after it has not arrived (each blob checked against its own digest); the table then
// loads from the same stream, and the rest follows.
func TestWorkingSetBeforeDigests(t *testing.T) {
	const n, ws = 1024, 256
	b, file, gate := overlayWithTable(t, n, ws)
	o := &gatedOrigin{b: file, gate: gate, open: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run, mem := startFetch(t, ctx, b, "", Options{EarlyStart: true, Origin: o})

	for c := int64(0); c < ws; c++ {
		for mem.State(c) != cloudletfs.StatePresent {
			if ctx.Err() != nil {
				t.Fatalf("working-set chunk %d did not arrive with the digest table held back", c)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if run.reader.DigestsLoaded() {
		t.Fatal("the digest table loaded, but its bytes were held back")
	}
	if mem.State(n-1) == cloudletfs.StatePresent {
		t.Fatal("a chunk after the digest table arrived while it was held back")
	}
	close(o.open)
	select {
	case <-run.fetcher.Complete():
	case <-run.fetcher.Failed():
		t.Fatal(run.fetcher.Err())
	case <-ctx.Done():
		t.Fatal("the fetch did not complete once the digest table was let through")
	}
	if !run.reader.DigestsLoaded() {
		t.Fatal("the fetch completed without the digest table")
	}
}

// TestCorruptDigestTable: a digest table that is not the one the index pins fails the fetch
// with an error naming it, after the working set was delivered on its blobs' own digests.
func TestCorruptDigestTable(t *testing.T) {
	b, file, off := overlayWithTable(t, 512, 128)
	file[off+7] ^= 1
	o := &gatedOrigin{b: file, gate: int64(len(file))}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run, _ := startFetch(t, ctx, b, "", Options{EarlyStart: true, Origin: o})
	select {
	case <-run.fetcher.Complete():
		t.Fatal("the fetch completed with a corrupt digest table")
	case <-run.fetcher.Failed():
		if err := run.fetcher.Err(); !strings.Contains(err.Error(), "digest table") {
			t.Fatalf("fetch failed with %v, want an error naming the digest table", err)
		}
	case <-ctx.Done():
		t.Fatal("the fetch neither failed nor completed")
	}
}
