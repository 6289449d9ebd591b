package chunkstore

import (
	"testing"

	"github.com/cloudlet/cloudlet/chunk"
)

// BenchmarkGet is a hit: open, fstat, read, SHA-256 and close of one 4 KiB chunk.
func BenchmarkGet(b *testing.B) {
	s, err := Open(b.TempDir(), 1<<30)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const n = 1024
	ds := make([]chunk.Digest, n)
	for i := range n {
		data, d := testChunk(i, chunk.Size)
		s.put(d, data)
		ds[i] = d
	}
	p := make([]byte, chunk.Size)
	b.SetBytes(chunk.Size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, ok := s.Get(ds[i%n], p); !ok {
			b.Fatal("miss")
		}
	}
}

// BenchmarkHas is the check a synthesis makes for every chunk of its overlay at start.
func BenchmarkHas(b *testing.B) {
	s, err := Open(b.TempDir(), 1<<30)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	data, d := testChunk(0, chunk.Size)
	s.put(d, data)
	for i := 0; i < b.N; i++ {
		s.Has(d)
	}
}

// BenchmarkPut is the store's writer writing one new chunk (temporary file, rename); the
// bound is large enough that no trim runs. Put itself only queues.
func BenchmarkPut(b *testing.B) {
	s, err := Open(b.TempDir(), 1<<40)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	chunks := make([][]byte, 256)
	for i := range chunks {
		chunks[i], _ = testChunk(i, chunk.Size)
	}
	b.SetBytes(chunk.Size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		data := chunks[i%len(chunks)]
		data[0], data[1], data[2] = byte(i), byte(i>>8), byte(i>>16) // a new chunk each time
		s.put(chunk.Sum(data), data)
	}
}

// BenchmarkTrim lists a store of 16k entries (64 MiB) that is within its bound.
func BenchmarkTrim(b *testing.B) {
	s, err := Open(b.TempDir(), 1<<40)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := range 16 << 10 {
		data, d := testChunk(i, chunk.Size)
		s.put(d, data)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Trim(); err != nil {
			b.Fatal(err)
		}
	}
}
