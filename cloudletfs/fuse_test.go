package cloudletfs_test

import (
	"bufio"
	"context"
	"math/rand"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
	"github.com/cloudlet/cloudlet/cloudletfs"
)

// TestReadsMatchModel reads named boundary cases and random ranges through a real mount and
// compares every byte with the model: base, zero and pending-then-delivered chunks.
func TestReadsMatchModel(t *testing.T) {
	f := newFixture(t, t.TempDir(), 1)
	m := f.mount(t, t.TempDir(), &cloudletfs.MemSource{Delay: time.Millisecond}, cloudletfs.MountOptions{})
	for _, name := range []string{"disk", "memory"} {
		want := f.want[name]
		size := int64(len(want))
		file, err := os.Open(m.path(name, "image"))
		if err != nil {
			t.Fatal(err)
		}
		defer file.Close()
		if st, _ := file.Stat(); st.Size() != size {
			t.Fatalf("%s: size %d, want %d", name, st.Size(), size)
		}
		cases := []struct {
			name    string
			off, n  int64
			wantLen int64
		}{
			{"first chunk (base)", 0, chunk.Size, chunk.Size},
			{"zero chunk", chunk.Size, chunk.Size, chunk.Size},
			{"pending chunk", 2 * chunk.Size, chunk.Size, chunk.Size},
			{"across base, zero and pending", chunk.Size - 10, 2*chunk.Size + 20, 2*chunk.Size + 20},
			{"one byte in a pending chunk", 3*chunk.Size + 7, 1, 1},
			{"tail past the end", size - 100, 4096, 100},
			{"at the end", size, 10, 0},
		}
		for _, c := range cases {
			buf := make([]byte, c.n)
			got, err := file.ReadAt(buf, c.off)
			if int64(got) != c.wantLen || (err != nil && got == len(buf)) {
				t.Fatalf("%s: %s: read %d bytes (%v), want %d", name, c.name, got, err, c.wantLen)
			}
			checkBytes(t, name+": "+c.name, buf[:got], want[c.off:c.off+int64(got)], c.off)
		}
		rng := rand.New(rand.NewSource(2))
		for range 300 {
			off := rng.Int63n(size)
			n := 1 + rng.Int63n(min(size-off, 5*chunk.Size))
			buf := make([]byte, n)
			if _, err := file.ReadAt(buf, off); err != nil {
				t.Fatalf("%s: read %d+%d: %v", name, off, n, err)
			}
			checkBytes(t, name+": random read", buf, want[off:off+n], off)
		}
	}
}

// TestWritesCopyOnWrite writes random ranges (partial and whole chunks, over base, zero and
// pending chunks) and checks reads against a model; the base file never changes.
func TestWritesCopyOnWrite(t *testing.T) {
	f := newFixture(t, t.TempDir(), 3)
	baseBefore, _ := os.ReadFile(f.configs[0].Base)
	m := f.mount(t, t.TempDir(), nil, cloudletfs.MountOptions{})
	model := append([]byte(nil), f.want["disk"]...)
	size := int64(len(model))
	file, err := os.OpenFile(m.path("disk", "image"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	rng := rand.New(rand.NewSource(4))
	// First, before any read can pull them in by readahead: whole pending chunks, which
	// need no fetch.
	writes := []struct{ off, n int64 }{
		{66 * chunk.Size, 2 * chunk.Size},
		{2*chunk.Size + 100, 10},         // partial, pending: fetched first
		{5 * chunk.Size, chunk.Size},     // whole zero chunk
		{4*chunk.Size + 4000, 200},       // partial base into partial zero
		{6 * chunk.Size, 3 * chunk.Size}, // whole chunks again
		{size - 10, 10},                  // the short last chunk
	}
	for range 100 {
		off := rng.Int63n(size)
		writes = append(writes, struct{ off, n int64 }{off, 1 + rng.Int63n(min(size-off, 3*chunk.Size))})
	}
	for _, w := range writes {
		data := make([]byte, w.n)
		rng.Read(data)
		if _, err := file.WriteAt(data, w.off); err != nil {
			t.Fatalf("write %d+%d: %v", w.off, w.n, err)
		}
		copy(model[w.off:], data)
		n := min(size-w.off, w.n+2*chunk.Size)
		lo := max(0, w.off-chunk.Size)
		buf := make([]byte, n)
		file.ReadAt(buf, lo)
		checkBytes(t, "read after write", buf, model[lo:lo+n], lo)
	}
	if m.src.Demands("disk", 66)+m.src.Demands("disk", 67) != 0 {
		t.Errorf("a pending chunk overwritten whole was fetched")
	}
	if err := file.Sync(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := file.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, "whole image", got, model, 0)
	if after, _ := os.ReadFile(f.configs[0].Base); string(after) != string(baseBefore) {
		t.Fatal("the base file changed")
	}
}

// TestConcurrentReadersOneDemand: 64 readers pile onto pending chunks; every chunk is demanded
// exactly once, and each reader gets the right bytes once the source delivers.
func TestConcurrentReadersOneDemand(t *testing.T) {
	f := newFixture(t, t.TempDir(), 5)
	src := &cloudletfs.MemSource{Hold: true}
	m := f.mount(t, t.TempDir(), src, cloudletfs.MountOptions{})
	pending := []int64{2, 3, 6, 7, 10, 11, 14, 15}
	want := f.want["memory"]
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := pending[i%len(pending)]
			file, err := os.Open(m.path("memory", "image"))
			if err != nil {
				errs <- err.Error()
				return
			}
			defer file.Close()
			buf := make([]byte, chunk.Size)
			if _, err := file.ReadAt(buf, c*chunk.Size); err != nil {
				errs <- err.Error()
				return
			}
			if string(buf) != string(want[c*chunk.Size:(c+1)*chunk.Size]) {
				errs <- "wrong bytes for chunk " + strconv.FormatInt(c, 10)
			}
		}()
	}
	eventually(t, 10*time.Second, "every pending chunk demanded", func() bool {
		for _, c := range pending {
			if src.Demands("memory", c) == 0 {
				return false
			}
		}
		return true
	})
	time.Sleep(50 * time.Millisecond) // let any duplicate demand show up
	src.Release()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	for _, c := range pending {
		if n := src.Demands("memory", c); n != 1 {
			t.Errorf("chunk %d demanded %d times, want 1", c, n)
		}
	}
	if n := src.TotalDemands(); n != len(pending) {
		t.Errorf("%d demands in all, want %d", n, len(pending))
	}
}

// TestStatsAndStreams: stats/ reflect the reads; streams/ give the set so far and then follow
// live with timestamps.
func TestStatsAndStreams(t *testing.T) {
	f := newFixture(t, t.TempDir(), 6)
	// Exact demand paging keeps the counts free of kernel readahead.
	m := f.mount(t, t.TempDir(), nil, cloudletfs.MountOptions{MaxReadAhead: chunk.Size})
	file, err := os.Open(m.path("disk", "image"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	buf := make([]byte, 4*chunk.Size)
	file.ReadAt(buf, 0) // chunks 0-3: base, zero, two pending

	stats, err := os.ReadFile(m.path("stats", "disk"))
	if err != nil {
		t.Fatal(err)
	}
	st := parseStats(t, string(stats))
	// Kernel readahead may have demanded more than chunks 2 and 3, and some of those may
	// still be on their way.
	if st["chunks_fetched"] < 2 || st["demand_misses"] < st["chunks_fetched"] || st["chunks_present"] != st["chunks_fetched"] || st["bytes_read"] < 4*chunk.Size {
		t.Fatalf("stats/disk after reading chunks 0-3:\n%s", stats)
	}
	if st["chunks_total"] != 97 {
		t.Fatalf("chunks_total %v, want 97", st["chunks_total"])
	}

	stream, err := os.Open(m.path("streams", "chunks_accessed"))
	if err != nil {
		t.Fatal(err)
	}
	// Not closed here: the reader below blocks for more events, and os.File.Close would
	// wait for it. The unmount ends the stream (and the reader) instead.
	lines := make(chan string, 100)
	go func() {
		s := bufio.NewScanner(stream)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
		stream.Close()
	}()
	next := func() string {
		select {
		case l := <-lines:
			return l
		case <-time.After(5 * time.Second):
			t.Fatal("no stream line within 5 s")
			return ""
		}
	}
	for c := range 4 {
		if fields := strings.Fields(next()); len(fields) != 3 || fields[1] != "disk" || fields[2] != strconv.Itoa(c) {
			t.Fatalf("stream line %d: %v", c, fields)
		}
	}
	// A new access shows up live, with a recent timestamp (after any readahead of the first).
	file.ReadAt(buf[:10], 50*chunk.Size)
	var fields []string
	for len(fields) != 3 || fields[2] != "50" {
		fields = strings.Fields(next())
	}
	ts, _ := strconv.ParseFloat(fields[0], 64)
	if d := time.Since(time.Unix(int64(ts), 0)); d < -time.Second || d > time.Minute {
		t.Fatalf("timestamp %s is %v off", fields[0], d)
	}

	io, _ := readAvailable(m.path("streams", "io"), 1)
	if len(io) != 1 || !strings.Contains(io[0], " disk read 0+16384") {
		t.Fatalf("streams/io: %q", io)
	}
	fetched, _ := readAvailable(m.path("streams", "chunks_fetched"), 2)
	if len(fetched) != 2 || !strings.HasSuffix(fetched[0], " disk 2") && !strings.HasSuffix(fetched[0], " disk 3") {
		t.Fatalf("chunks_fetched: %q", fetched)
	}
}

func parseStats(t *testing.T, s string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		k, v, ok := strings.Cut(l, " ")
		f, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil {
			t.Fatalf("stats line %q", l)
		}
		out[k] = f
	}
	return out
}

// readAvailable reads n lines from a stream file (which would block for more).
func readAvailable(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	var out []string
	for len(out) < n && s.Scan() {
		out = append(out, s.Text())
	}
	return out, s.Err()
}

// TestCacheGuards: a cache belongs to one identity and one mount at a time.
func TestCacheGuards(t *testing.T) {
	f := newFixture(t, t.TempDir(), 7)
	cache := t.TempDir()
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: cache, Images: f.configs, Identity: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cloudletfs.Open(cloudletfs.Config{Dir: cache, Images: f.configs, Identity: "a"}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open of a cache in use: %v", err)
	}
	fsys.Close()
	if _, err := cloudletfs.Open(cloudletfs.Config{Dir: cache, Images: f.configs, Identity: "b"}); err == nil || !strings.Contains(err.Error(), "belongs to") {
		t.Fatalf("open for another identity: %v", err)
	}
}

// TestDirtyLimitRaised: with RaiseDirtyLimit the mount's bdi allows a shared-mmap guest to
// dirty memory without the strict per-bdi throttle.
func TestDirtyLimitRaised(t *testing.T) {
	f := newFixture(t, t.TempDir(), 8)
	for _, raise := range []bool{false, true} {
		m := f.mount(t, t.TempDir(), nil, cloudletfs.MountOptions{RaiseDirtyLimit: raise})
		ratio, strict, err := cloudletfs.DirtyLimit(m.dir)
		if err != nil {
			t.Fatal(err)
		}
		if raise && (ratio != "50" || strict != "0") || !raise && ratio == "50" {
			t.Fatalf("raise=%v: max_ratio %s, strict_limit %s", raise, ratio, strict)
		}
	}
}

// TestReadWaitsAreCancellable: a reader blocked on a chunk that never comes gives up with
// its context, and the store reports the chunk range.
func TestReadWaitsAreCancellable(t *testing.T) {
	f := newFixture(t, t.TempDir(), 9)
	src := &cloudletfs.MemSource{Hold: true}
	fsys, err := cloudletfs.Open(cloudletfs.Config{Dir: t.TempDir(), Images: f.configs, Demander: src})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	src.Data = f.want
	src.Attach(fsys)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = fsys.Image("disk").ReadAt(ctx, make([]byte, 10), 2*chunk.Size)
	if err == nil || !strings.Contains(err.Error(), "chunks 2-2") {
		t.Fatalf("read of a held chunk: %v", err)
	}
}

// TestChildrenDoNotInheritTheDevice: a process started after the mount (QEMU) must not hold
// /dev/fuse, or it would keep a dead server's connection alive and hang in its own exit.
func TestChildrenDoNotInheritTheDevice(t *testing.T) {
	f := newFixture(t, t.TempDir(), 14)
	f.mount(t, t.TempDir(), nil, cloudletfs.MountOptions{})
	out, err := exec.Command("sh", "-c", "ls -l /proc/$$/fd").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "/dev/fuse") {
		t.Fatalf("a child inherited the FUSE device:\n%s", out)
	}
}
