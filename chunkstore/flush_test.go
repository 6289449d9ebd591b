package chunkstore

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestFlushFullQueue: a Flush that waits for room in a full queue holds no lock, so a Close
// that comes meanwhile does not stall the Puts and Tags behind it (a Put never waits), and
// everything ends once the writer moves again.
func TestFlushFullQueue(t *testing.T) {
	s, _ := openTest(t, t.TempDir(), 1<<30)
	data, d := testChunk(0, 100)
	s.put(d, data) // present: its next Put touches it, and reads the clock
	gate, entered := make(chan struct{}), make(chan struct{})
	var once sync.Once
	s.now = func() time.Time {
		once.Do(func() { close(entered); <-gate })
		return time.Now()
	}
	s.Put(d, data)
	<-entered // the writer waits in the clock
	for i := range putQueue {
		data, d := testChunk(i+1, 8)
		s.Put(d, data)
	}

	var wg sync.WaitGroup
	flushed, closed := make(chan error, 1), make(chan struct{})
	wg.Add(2)
	go func() {
		defer wg.Done()
		flushed <- s.Flush(context.Background())
	}()
	time.Sleep(100 * time.Millisecond) // Flush waits for room in the queue
	go func() {
		defer wg.Done()
		s.Close()
		close(closed)
	}()
	time.Sleep(100 * time.Millisecond) // Close waits

	done := make(chan struct{})
	go func() {
		defer close(done)
		data, d := testChunk(putQueue+1, 8)
		s.Put(d, data)
		s.Tag("ab", time.Time{}, nil)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("a Put waits behind a Flush that waits for room in the queue")
	}
	close(gate)
	<-done
	wg.Wait()
	if err := <-flushed; err != nil {
		t.Fatalf("Flush: %v", err)
	}
	<-closed
	if st := s.Stats(); st.Puts != putQueue+1 {
		t.Fatalf("stats %+v, want the %d chunks queued before Close written", st, putQueue+1)
	}
}
