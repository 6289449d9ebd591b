package cloudletfs_test

import (
	"sync"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
)

// TestConcurrentSync: the flusher, fsyncs from the mount and Close make chunks durable at the
// same time; each records what it made durable, in order, and the presence map ends up
// right. Run with -race: the map's bytes were written by two Syncs at once.
func TestConcurrentSync(t *testing.T) {
	f := newFixture(t, t.TempDir(), 41)
	cache := t.TempDir()
	src := &cloudletfs.MemSource{Data: f.want}
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: cache, Images: f.configs, Demander: src, Identity: "fixture", FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	src.Attach(fsys)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				if err := fsys.Sync(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	// Meanwhile the VM writes disk chunks over and over, and memory chunks arrive.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 2000 {
			if _, err := fsys.Image("disk").WriteAt(t.Context(), []byte{byte(i)}, int64(i%64)*chunk.Size); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var pending []int64
	for c := int64(2); c < 128; c += 4 {
		pending = append(pending, c, c+1)
	}
	for _, c := range pending {
		if err := fsys.Deliver("memory", c, src.Chunk("memory", c)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Microsecond)
	}
	wg.Wait()
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopened, every delivered chunk is present: none is fetched again.
	again := &cloudletfs.MemSource{Data: f.want}
	fsys, err = cloudletfs.Open(cloudletfs.Config{Dir: cache, Images: f.configs, Demander: again, Identity: "fixture"})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	for _, c := range pending {
		if s := fsys.Image("memory").State(c); s != cloudletfs.StatePresent {
			t.Errorf("memory chunk %d after reopening: %v, want present", c, s)
		}
	}
	for c := range int64(64) {
		if s := fsys.Image("disk").State(c); s != cloudletfs.StateModified {
			t.Errorf("disk chunk %d after reopening: %v, want modified", c, s)
		}
	}
}
