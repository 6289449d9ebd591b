package synthesis

import (
	"strings"
	"testing"
	"time"
)

// TestFetcherPanicFailsTheFetch: a panic in a fetcher goroutine ends that fetch with an error,
// not the process.
func TestFetcherPanicFailsTheFetch(t *testing.T) {
	f := &Fetcher{failed: make(chan struct{})}
	f.goSafe(func() { panic("decoder defect") })
	select {
	case <-f.Failed():
	case <-time.After(5 * time.Second):
		t.Fatal("the fetch did not fail after a panic")
	}
	f.Close()
	if err := f.Err(); err == nil || !strings.Contains(err.Error(), "decoder defect") {
		t.Fatalf("error %v, want the panic's message", err)
	}
}
