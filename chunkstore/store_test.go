package chunkstore

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
)

// TestGetPut: what is put comes back whole, short chunks too; what was never put, or does not
// fit the caller's buffer, is absent.
func TestGetPut(t *testing.T) {
	s, _ := openTest(t, t.TempDir(), 1<<20)
	tests := []struct {
		name string
		n    int
	}{{"full chunk", chunk.Size}, {"short last chunk", 1000}, {"one byte", 1}}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, d := testChunk(i, tt.n)
			p := make([]byte, chunk.Size)
			if _, ok := s.Get(d, p); ok || s.Has(d) {
				t.Fatal("a chunk never put is there")
			}
			s.put(d, data)
			if !s.Has(d) {
				t.Fatal("Has: a chunk just put is not there")
			}
			n, ok := s.Get(d, p)
			if !ok || !bytes.Equal(p[:n], data) {
				t.Fatalf("Get: got %d bytes, ok %v, want the %d bytes put", n, ok, tt.n)
			}
			if _, ok := s.Get(d, make([]byte, tt.n-1)); ok {
				t.Fatal("Get into a buffer too short succeeded")
			}
		})
	}
	if st := s.Stats(); st.Puts != 3 || st.Hits != 3 || st.Corrupt != 0 {
		t.Fatalf("stats %+v, want 3 puts, 3 hits, no corrupt entry", st)
	}
}

// TestCorruptEntry: an entry whose bytes are not its chunk is never returned; it is removed
// and reported, and a later Put restores it.
func TestCorruptEntry(t *testing.T) {
	other, _ := testChunk(99, chunk.Size)
	tests := []struct {
		name    string
		corrupt func(data []byte) []byte
	}{
		{"one bit flipped", func(b []byte) []byte { b[100] ^= 1; return b }},
		{"truncated", func(b []byte) []byte { return b[:chunk.Size/2] }},
		{"empty", func(b []byte) []byte { return nil }},
		{"too long", func(b []byte) []byte { return append(b, b...) }},
		{"another chunk", func([]byte) []byte { return other }},
		{"one byte appended", func(b []byte) []byte { return append(b, 0) }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, logs := openTest(t, t.TempDir(), 1<<20)
			data, d := testChunk(i, chunk.Size)
			s.put(d, data)
			bad := tt.corrupt(bytes.Clone(data))
			if err := os.WriteFile(s.path(d), bad, 0o600); err != nil {
				t.Fatal(err)
			}
			p := make([]byte, 2*chunk.Size)
			if n, ok := s.Get(d, p); ok {
				t.Fatalf("a corrupt entry was returned (%d bytes)", n)
			}
			if bytes.Contains(p, bad[:min(len(bad), 64)]) && len(bad) > 0 {
				t.Fatal("the corrupt bytes were left in the caller's buffer")
			}
			if _, err := os.Stat(s.path(d)); !os.IsNotExist(err) {
				t.Fatalf("the corrupt entry is still there: %v", err)
			}
			if st := s.Stats(); st.Corrupt != 1 {
				t.Fatalf("stats %+v, want 1 corrupt entry", st)
			}
			if logs.String() == "" {
				t.Fatal("nothing logged about the corrupt entry")
			}
			s.put(d, data)
			if n, ok := s.Get(d, p); !ok || !bytes.Equal(p[:n], data) {
				t.Fatal("the chunk put again after the corruption is not there")
			}
		})
	}
}

// TestDurable: entries, and their recency, survive Close and Open: after a restart, the
// entry evicted is the one least recently used before it.
func TestDurable(t *testing.T) {
	dir := t.TempDir()
	s, _ := openTest(t, dir, 3*chunk.Size)
	var ds []chunk.Digest
	for i := range 3 {
		data, d := testChunk(i, chunk.Size)
		s.put(d, data)
		ds = append(ds, d)
	}
	p := make([]byte, chunk.Size)
	s.Get(ds[0], p) // chunk 0 is now the most recently used, chunk 1 the least
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, _ := openTest(t, dir, 3*chunk.Size)
	s2.now = (&fakeClock{t: time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)}).now
	for i, d := range ds {
		if !s2.Has(d) {
			t.Fatalf("chunk %d is gone after Close and Open", i)
		}
	}
	data, d := testChunk(3, chunk.Size)
	s2.put(d, data)
	if err := s2.Trim(); err != nil {
		t.Fatal(err)
	}
	for i, d := range append(ds, d) {
		if got, want := s2.Has(d), i != 1; got != want {
			t.Errorf("chunk %d: present %v, want %v", i, got, want)
		}
	}
	if _, ok := s2.Get(ds[0], p); !ok {
		t.Fatal("chunk 0 does not read back after the restart")
	}
}

// TestPutQueue: Put only queues; Flush waits for what was queued, Close writes it, and a Put
// after Close is dropped and counted.
func TestPutQueue(t *testing.T) {
	dir := t.TempDir()
	s, _ := openTest(t, dir, 1<<20)
	const n = 100
	for i := range n {
		data, d := testChunk(i, chunk.Size)
		s.Put(d, data)
		data[0] ^= 1 // the caller may reuse its buffer at once
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, chunk.Size)
	for i := range n {
		want, d := testChunk(i, chunk.Size)
		if n, ok := s.Get(d, p); !ok || !bytes.Equal(p[:n], want) {
			t.Fatalf("chunk %d does not read back after Flush", i)
		}
	}
	for i := n; i < 2*n; i++ {
		data, d := testChunk(i, chunk.Size)
		s.Put(d, data)
	}
	s.Close()
	for i := n; i < 2*n; i++ {
		if _, d := testChunk(i, chunk.Size); !s.Has(d) {
			t.Fatalf("chunk %d, put before Close, is not there after it", i)
		}
	}
	data, d := testChunk(2*n, chunk.Size)
	s.Put(d, data)
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); s.Has(d) || st.Dropped != 1 || st.Puts != 2*n {
		t.Fatalf("after Close: present %v, stats %+v; want absent, 1 dropped, %d puts", s.Has(d), st, 2*n)
	}
}
