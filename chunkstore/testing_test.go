package chunkstore

import (
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/chunk"
)

// testChunk is a seeded chunk of n bytes, different for every i.
func testChunk(i, n int) ([]byte, chunk.Digest) {
	data := make([]byte, n)
	for j := 0; j+8 <= n; j += 8 {
		binary.LittleEndian.PutUint64(data[j:], uint64(i)*0x9e3779b97f4a7c15+uint64(j))
	}
	return data, chunk.Sum(data)
}

// fakeClock advances one second at each reading, so that every Put and Get of a test has its
// own time and the LRU order is the order of the calls.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

// nowReal is the wall clock, for tests where processes share the directory.
func nowReal() time.Time { return time.Now() }

// logRecorder keeps what a store logged.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logRecorder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// openTest opens a store in dir with a fake clock, touches on every Get, and a log kept for
// the test.
func openTest(t *testing.T, dir string, maxBytes int64) (*Store, *logRecorder) {
	t.Helper()
	s, err := Open(dir, maxBytes)
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	logs := &logRecorder{}
	s.now, s.touchEvery, s.logf = clock.now, 0, logs.logf
	t.Cleanup(func() { s.Close() })
	return s, logs
}
