package chunkstore

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"

	"github.com/cloudlet/cloudlet/chunk"
)

// concurrentChunks is how many distinct chunks the concurrent users share; the bound holds a
// quarter of them, so that trims and reads race all the time.
const concurrentChunks = 400

// churn puts and reads chunks of the shared set through s, and fails on a read that returns
// anything but the chunk asked for.
func churn(s *Store, seed, rounds int) error {
	p := make([]byte, chunk.Size)
	for r := range rounds {
		i := (seed*7919 + r*31) % concurrentChunks
		data, d := testChunk(i, chunk.Size-i) // varied lengths
		if r%3 == 0 {
			s.Put(d, data)
			continue
		}
		if n, ok := s.Get(d, p); ok && !bytes.Equal(p[:n], data) {
			return fmt.Errorf("chunk %d: read back %d bytes that are not the chunk", i, n)
		}
	}
	return nil
}

// TestConcurrentStores: several Stores on one directory, in this process and in others, put,
// read and evict at once; every read returns the right bytes, nothing is corrupt, and a final
// trim brings the directory within the bound.
func TestConcurrentStores(t *testing.T) {
	dir := t.TempDir()
	const max = concurrentChunks / 4 * chunk.Size
	var procs []*exec.Cmd
	for k := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), "CHUNKSTORE_HELPER_DIR="+dir, "CHUNKSTORE_HELPER_SEED="+strconv.Itoa(100+k))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("helper %d:\n%s", k, out.String())
			}
		})
		procs = append(procs, cmd)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	var stores []*Store
	for k := range 4 {
		s, _ := openTest(t, dir, max)
		s.now = nowReal
		stores = append(stores, s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- churn(s, k, 3000)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	for k, p := range procs {
		if err := p.Wait(); err != nil {
			t.Errorf("helper process %d: %v", k, err)
		}
	}
	for k, s := range stores {
		s.Close()
		if st := s.Stats(); st.Corrupt != 0 || st.PutErrors != 0 {
			t.Errorf("store %d: stats %+v, want no corrupt entry and no put error", k, st)
		}
	}
	if err := stores[0].Trim(); err != nil {
		t.Fatal(err)
	}
	if b := diskBytes(t, dir); b > max {
		t.Fatalf("%d bytes on disk after a trim, want at most %d", b, max)
	}
}

// TestHelperProcess is one of TestConcurrentStores's other processes.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv("CHUNKSTORE_HELPER_DIR")
	if dir == "" {
		return // run directly: nothing to do
	}
	seed, _ := strconv.Atoi(os.Getenv("CHUNKSTORE_HELPER_SEED"))
	s, err := Open(dir, concurrentChunks/4*chunk.Size)
	if err != nil {
		t.Fatal(err)
	}
	s.touchEvery = 0
	if err := churn(s, seed, 3000); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if st := s.Stats(); st.Corrupt != 0 || st.PutErrors != 0 {
		t.Fatalf("stats %+v, want no corrupt entry and no put error", st)
	}
}
