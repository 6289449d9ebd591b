package synthesis

import (
	"bytes"
	"context"
	"io"
	"math/rand"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/base"
	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
	"github.com/cloudlet/cloudlet/overlay"
	"github.com/cloudlet/cloudlet/vm"
)

// baseRefOverlay writes an overlay over b whose memory holds 200 base references, each a run
// of its own, at chunks 0, 2, ... 398; one stored chunk at 3000, the working set; and a base
// reference beside it at 3001 and one far from it at 4000. It returns the overlay's path and
// each reference's base chunk by its memory chunk.
func baseRefOverlay(t *testing.T, b *base.Base, mem []byte) (string, map[int64]int64) {
	t.Helper()
	baseOf := map[int64]int64{3001: 10, 4000: 20}
	for i := int64(0); i < 400; i += 2 {
		baseOf[i] = 2000 + i
	}
	stored := make([]byte, chunk.Size)
	rand.New(rand.NewSource(1)).Read(stored)
	entries := []overlay.Entry{{Image: 1, Index: 3000, Kind: overlay.KindBlob, Digest: chunk.Sum(stored)}}
	for c, bc := range baseOf {
		entries = append(entries, overlay.Entry{Image: 1, Index: c, Kind: overlay.KindBase, BaseImage: 1, BaseIndex: bc,
			Digest: chunk.Sum(mem[bc*chunk.Size : (bc+1)*chunk.Size])})
	}
	path := t.TempDir() + "/refs.overlay"
	_, err := overlay.WriteFile(context.Background(), path, t.TempDir(), testMeta(t, b, 1), []byte("devstate"), entries, []int{0},
		func(uint8, int64) ([]byte, error) { return stored, nil })
	if err != nil {
		t.Fatal(err)
	}
	return path, baseOf
}

// gatedBase records the offsets read from a base image; the first read waits for gate.
type gatedBase struct {
	io.ReaderAt
	started, gate chan struct{}
	mu            sync.Mutex
	reads         []int64
}

func (g *gatedBase) ReadAt(p []byte, off int64) (int, error) {
	g.mu.Lock()
	g.reads = append(g.reads, off)
	first := len(g.reads) == 1
	g.mu.Unlock()
	if first {
		close(g.started)
		<-g.gate
	}
	return g.ReaderAt.ReadAt(p, off)
}

// TestBaseRefsOrder: the base references next to the working set are read from the base
// first, and a demanded one before the rest; in index order, the VM that touches either waits
// for every reference before it.
func TestBaseRefsOrder(t *testing.T) {
	mem := make([]byte, 16<<20)
	rand.New(rand.NewSource(2)).Read(mem)
	store, err := base.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := base.CommitTinyMemory(t, store, "refs", func(*vm.Config) {}, mem)
	path, baseOf := baseRefOverlay(t, b, mem)
	for _, tc := range []struct {
		name   string
		demand int64 // memory chunk demanded while the first read waits; -1: none
		want   []int64
	}{
		{"next to the working set first", -1, []int64{3001, 0, 2}},
		{"a demanded one next", 4000, []int64{3001, 4000, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			g := &gatedBase{started: make(chan struct{}), gate: make(chan struct{})}
			r, img := startFetchOver(t, ctx, b, path, Options{EarlyStart: true}, func(imgs []io.ReaderAt) []io.ReaderAt {
				g.ReaderAt = imgs[1]
				return []io.ReaderAt{imgs[0], g}
			})
			select {
			case <-g.started:
			case <-time.After(10 * time.Second):
				t.Fatal("the fetcher read no base reference within 10 s")
			}
			if tc.demand >= 0 {
				r.fetcher.Demand("memory", tc.demand, cloudletfs.PriorityDemand)
			}
			close(g.gate)
			select {
			case <-r.fetcher.Complete():
			case <-r.fetcher.Failed():
				t.Fatal(r.fetcher.Err())
			case <-time.After(10 * time.Second):
				t.Fatal("the fetch did not complete within 10 s")
			}
			g.mu.Lock()
			reads := g.reads
			g.mu.Unlock()
			var want []int64
			for _, c := range tc.want {
				want = append(want, baseOf[c]*chunk.Size)
			}
			if len(reads) < len(want) || !slices.Equal(reads[:len(want)], want) {
				t.Errorf("first base reads at %v, want %v (the base chunks of memory chunks %v)", reads[:min(len(reads), 5)], want, tc.want)
			}
			got := make([]byte, chunk.Size)
			for c, bc := range baseOf {
				if _, err := img.ReadAt(ctx, got, c*chunk.Size); err != nil || !bytes.Equal(got, mem[bc*chunk.Size:(bc+1)*chunk.Size]) {
					t.Fatalf("memory chunk %d: not base chunk %d (%v)", c, bc, err)
				}
			}
		})
	}
}
