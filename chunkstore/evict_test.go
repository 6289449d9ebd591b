package chunkstore

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
)

// TestEvictLRU: under the bound, the entries evicted are those least recently put or read,
// in that order, and the directory ends within the bound.
func TestEvictLRU(t *testing.T) {
	// Each step is a Put or a Get of chunk i; after each, a trim; want is what is left then.
	type step struct {
		op   string
		i    int
		want []int
	}
	tests := []struct {
		name  string
		max   int // in chunks
		steps []step
	}{
		{"oldest put goes first", 3, []step{
			{"put", 0, []int{0}}, {"put", 1, []int{0, 1}}, {"put", 2, []int{0, 1, 2}},
			{"put", 3, []int{1, 2, 3}}, {"put", 4, []int{2, 3, 4}}}},
		{"a read keeps a chunk", 3, []step{
			{"put", 0, []int{0}}, {"put", 1, []int{0, 1}}, {"put", 2, []int{0, 1, 2}},
			{"get", 0, []int{0, 1, 2}}, {"put", 3, []int{0, 2, 3}}, {"get", 2, []int{0, 2, 3}},
			{"put", 4, []int{2, 3, 4}}}},
		{"a put of a present chunk keeps it", 2, []step{
			{"put", 0, []int{0}}, {"put", 1, []int{0, 1}}, {"put", 0, []int{0, 1}},
			{"put", 2, []int{0, 2}}}},
		{"bound of one chunk", 1, []step{
			{"put", 0, []int{0}}, {"put", 1, []int{1}}, {"get", 0, []int{1}}, {"put", 2, []int{2}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTest(t, t.TempDir(), int64(tt.max)*chunk.Size)
			p := make([]byte, chunk.Size)
			for k, st := range tt.steps {
				data, d := testChunk(st.i, chunk.Size)
				if st.op == "put" {
					s.put(d, data)
				} else {
					s.Get(d, p)
				}
				s.wg.Wait() // a background trim
				if err := s.Trim(); err != nil {
					t.Fatal(err)
				}
				var have []int
				for i := range 5 {
					if _, d := testChunk(i, chunk.Size); s.Has(d) {
						have = append(have, i)
					}
				}
				if !equal(have, st.want) {
					t.Fatalf("after step %d (%s %d): chunks %v, want %v", k, st.op, st.i, have, st.want)
				}
				if u := s.Stats().Bytes; u > int64(tt.max)*chunk.Size {
					t.Fatalf("after step %d: %d bytes, over the bound of %d", k, u, tt.max*chunk.Size)
				}
			}
		})
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestFullBound: far more put than the bound holds; the background trims keep the directory
// within the bound plus one slice, a final trim within the bound, and the entries kept are the
// most recent ones.
func TestFullBound(t *testing.T) {
	const max, n = 64, 1000 // chunks
	s, _ := openTest(t, t.TempDir(), max*chunk.Size)
	for i := range n {
		data, d := testChunk(i, chunk.Size)
		s.Put(d, data)
		if i%(putQueue/2) == 0 {
			s.Flush(context.Background()) // never drop
		}
	}
	s.Flush(context.Background())
	s.wg.Wait()
	if b := diskBytes(t, s.dir); b > max*chunk.Size+s.slice {
		t.Fatalf("%d bytes on disk after the background trims, want at most %d + %d", b, max*chunk.Size, s.slice)
	}
	if err := s.Trim(); err != nil {
		t.Fatal(err)
	}
	if b := diskBytes(t, s.dir); b != max*chunk.Size {
		t.Fatalf("%d bytes on disk after a trim, want %d", b, max*chunk.Size)
	}
	for i := n - max; i < n; i++ {
		if _, d := testChunk(i, chunk.Size); !s.Has(d) {
			t.Fatalf("chunk %d, among the %d most recent, was evicted", i, max)
		}
	}
	if st := s.Stats(); st.Evicted != n-max || st.Puts != n {
		t.Fatalf("stats %+v, want %d puts and %d evicted", st, n, n-max)
	}
}

// diskBytes is the size of the chunk files under dir.
func diskBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(path string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() || len(de.Name()) != 2*chunk.DigestSize {
			return err
		}
		fi, err := de.Info()
		if err == nil {
			total += fi.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// TestPutFails: a Put that cannot write (here its fan-out directory is a file) is logged and
// counted, and the store goes on.
func TestPutFails(t *testing.T) {
	s, logs := openTest(t, t.TempDir(), 1<<20)
	data, d := testChunk(0, chunk.Size)
	if err := os.WriteFile(filepath.Dir(s.path(d)), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s.put(d, data)
	if st := s.Stats(); st.PutErrors != 1 || st.Puts != 0 {
		t.Fatalf("stats %+v, want one put error", st)
	}
	if logs.String() == "" {
		t.Fatal("the failed put was not logged")
	}
	if _, ok := s.Get(d, make([]byte, chunk.Size)); ok {
		t.Fatal("a chunk whose put failed is there")
	}
	data1, d1 := testChunk(1, chunk.Size)
	for filepath.Dir(s.path(d1)) == filepath.Dir(s.path(d)) {
		t.Fatal("test chunks 0 and 1 share a fan-out directory; pick others")
	}
	s.put(d1, data1)
	if !s.Has(d1) {
		t.Fatal("a put after a failed one did not store its chunk")
	}
}

// TestTags: a tag is set once the chunks put before it are written, survives a reopen, and
// goes when a trim evicts a chunk of its set; names that are not hex are refused.
func TestTags(t *testing.T) {
	dir := t.TempDir()
	s, _ := openTest(t, dir, 2*chunk.Size)
	since := s.now()
	data, d := testChunk(0, chunk.Size)
	s.Put(d, data)
	s.Tag("ab12", since, []byte("recipe"))
	s.Tag("cd34", since, make([]byte, MaxTagData+1)) // too much data: set without it
	s.Tag("../evil", since, nil)
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !s.Has(d) || !s.Tagged("ab12") {
		t.Fatalf("after Flush: chunk there %v, tag set %v; want both", s.Has(d), s.Tagged("ab12"))
	}
	if s.Tagged("../evil") {
		t.Fatal("a tag that is not hex was set")
	}
	if _, err := os.Stat(filepath.Join(dir, "..", "evil")); err == nil {
		t.Fatal("a tag was written outside the store")
	}
	s.Close()
	s2, _ := openTest(t, dir, 2*chunk.Size)
	if !s2.Tagged("ab12") {
		t.Fatal("the tag is gone after a reopen")
	}
	for name, want := range map[string]string{"ab12": "recipe", "cd34": ""} {
		if got, ok := s2.TagData(name); !ok || string(got) != want {
			t.Fatalf("tag %s data %q (set %v), want %q", name, got, ok, want)
		}
	}
	s2.now = (&fakeClock{t: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}).now
	for i := 1; i <= 2; i++ { // two newer chunks: chunk 0 is evicted
		data, d := testChunk(i, chunk.Size)
		s2.put(d, data)
	}
	s2.wg.Wait()
	if err := s2.Trim(); err != nil {
		t.Fatal(err)
	}
	if s2.Has(d) || s2.Tagged("ab12") {
		t.Fatalf("after chunk 0's eviction: chunk there %v, tag set %v; want neither", s2.Has(d), s2.Tagged("ab12"))
	}
}
