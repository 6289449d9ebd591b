package cloudletfs_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
)

// The cache invariant: a chunk recorded present holds exactly the overlay's bytes, durably,
// whatever crashes when. TestCacheInvariantModel interleaves deliveries, VM writes and syncs
// at random (seeded, many rounds), and copies the cache at random instants as a crash would
// leave it. A re-run over a crash copy, which drops the VM's writes as synthesis does, must
// read exactly the overlay's image; after Close, a reopened cache keeps each chunk's latest
// state. The images have no Expected hook: verification at Open would hide a broken record.
func TestCacheInvariantModel(t *testing.T) {
	f := newFixture(t, t.TempDir(), 5)
	for seed := range int64(30) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := runModelRound(t, f, seed)
			for i, dir := range r.crashes {
				got := reopenAndRead(t, f, dir, true, "memory")
				checkBytes(t, fmt.Sprintf("re-run over crash copy %d", i), got, f.want["memory"], 0)
			}
			r.checkReopened(t, f)
		})
	}
}

// modelRound is what one round did: the VM's last write to each chunk it wrote (a chunk
// filled with that byte), the chunks delivered, and the crash copies taken.
type modelRound struct {
	cache     string
	written   map[int64]byte
	delivered map[int64]bool
	crashes   []string
}

// runModelRound runs a deliverer, a VM writer and a syncer (which also takes crash copies)
// at once on the fixture's memory image, then closes the cache.
func runModelRound(t *testing.T, f *fixture, seed int64) *modelRound {
	r := &modelRound{cache: t.TempDir(), written: map[int64]byte{}, delivered: map[int64]bool{}}
	src := &cloudletfs.MemSource{Data: f.want}
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: r.cache, Images: f.configs, Demander: src, Identity: "fixture", FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	src.Attach(fsys)
	img := fsys.Image("memory")
	// Pending chunks of the fixture are those with i%4 >= 2; most writes go to them, so that
	// they race their deliveries and syncs.
	pending := func(rng *rand.Rand) int64 { return 4*rng.Int63n(32) + 2 + rng.Int63n(2) }
	var wg sync.WaitGroup
	var mu sync.Mutex // guards r's maps and crashes
	run := func(k int64, body func(rng *rand.Rand) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := body(rand.New(rand.NewSource(seed*3 + k))); err != nil {
				t.Error(err)
			}
		}()
	}
	run(0, func(rng *rand.Rand) error {
		for range 150 {
			c := pending(rng)
			if err := fsys.Deliver("memory", c, src.Chunk("memory", c)); err != nil {
				return err
			}
			mu.Lock()
			r.delivered[c] = true
			mu.Unlock()
		}
		return nil
	})
	run(1, func(rng *rand.Rand) error {
		for i := range 60 {
			c := pending(rng)
			if rng.Intn(5) == 0 {
				c = rng.Int63n(128)
			}
			v := byte(i%250 + 1)
			if _, err := img.WriteAt(t.Context(), bytes.Repeat([]byte{v}, chunk.Size), c*chunk.Size); err != nil {
				return err
			}
			mu.Lock()
			r.written[c] = v
			mu.Unlock()
		}
		return nil
	})
	run(2, func(rng *rand.Rand) error {
		for range 30 {
			if rng.Intn(3) > 0 {
				if err := fsys.Sync(); err != nil {
					return err
				}
				continue
			}
			dir := t.TempDir()
			if err := fsys.CrashCopy(dir); err != nil {
				return err
			}
			mu.Lock()
			r.crashes = append(r.crashes, dir)
			mu.Unlock()
		}
		return nil
	})
	wg.Wait()
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
	return r
}

// checkReopened: after Close, every chunk the VM wrote is modified and holds its last write,
// every other delivered chunk is present, and the rest is as planned.
func (r *modelRound) checkReopened(t *testing.T, f *fixture) {
	want := bytes.Clone(f.want["memory"])
	for c, v := range r.written {
		copy(want[c*chunk.Size:], bytes.Repeat([]byte{v}, chunk.Size))
	}
	src := &cloudletfs.MemSource{Data: f.want}
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: r.cache, Images: f.configs, Demander: src, Identity: "fixture"})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	src.Attach(fsys)
	img := fsys.Image("memory")
	for c := range int64(128) {
		plan := f.configs[1].Plan[c]
		wantState := plan
		if _, ok := r.written[c]; ok {
			wantState = cloudletfs.StateModified
		} else if r.delivered[c] {
			wantState = cloudletfs.StatePresent
		}
		if s := img.State(c); s != wantState {
			t.Errorf("chunk %d after Close and reopening: %v, want %v", c, s, wantState)
		}
	}
	got := make([]byte, len(want))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := img.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "memory after Close and reopening", got, want, 0)
}

// reopenAndRead opens the cache in dir over the fixture and reads one image whole.
func reopenAndRead(t *testing.T, f *fixture, dir string, discardModified bool, name string) []byte {
	t.Helper()
	src := &cloudletfs.MemSource{Data: f.want}
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: dir, Images: f.configs, Demander: src, Identity: "fixture", DiscardModified: discardModified})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	src.Attach(fsys)
	img := fsys.Image(name)
	got := make([]byte, img.Size())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := img.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	return got
}
