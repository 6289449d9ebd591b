package synthesis

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestFetcherPanicFailsTheFetch: a panic in a fetcher goroutine ends that fetch with an error,
// not the process, also when it struck with the fetcher's lock held.
func TestFetcherPanicFailsTheFetch(t *testing.T) {
	for _, tc := range []struct {
		name string
		fn   func(f *Fetcher)
	}{
		{"unlocked", func(f *Fetcher) { panic("decoder defect") }},
		{"lock held", func(f *Fetcher) { f.mu.Lock(); panic("decoder defect") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &Fetcher{failed: make(chan struct{})}
			f.goSafe(func() { tc.fn(f) })
			select {
			case <-f.Failed():
			case <-time.After(5 * time.Second):
				t.Fatal("the fetch did not fail after a panic")
			}
			f.wg.Wait()
			if err := f.Err(); err == nil || !strings.Contains(err.Error(), "decoder defect") {
				t.Fatalf("error %v, want the panic's message", err)
			}
		})
	}
}

// TestFailWhileFinishing: a fetch that fails while another goroutine finds it done is no data
// race (run under -race): the failure is read under its own lock.
func TestFailWhileFinishing(t *testing.T) {
	for range 100 {
		f := &Fetcher{failed: make(chan struct{}), complete: make(chan struct{}), baseDone: true}
		done := make(chan struct{})
		go func() {
			f.fail(errors.New("origin gone"))
			close(done)
		}()
		f.finishIfDone()
		<-done
	}
}
