package origin

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestHTTPOriginSlowLinks: a read is bounded by lack of progress, not by its total time. A
// steady slow range that takes several times the retry budget and the attempt timeout finishes;
// one whose link hangs fails after the idle timeout and the retry budget, with a message saying
// so; and one whose link hangs once resumes from where it stopped.
func TestHTTPOriginSlowLinks(t *testing.T) {
	opts := HTTPOptions{AttemptTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond, RetryFor: 500 * time.Millisecond}
	tests := []struct {
		name    string
		size    int
		rate    int64 // bytes per second
		stalls  int
		wantErr string
		atLeast time.Duration
	}{
		// 256 KiB at 128 KiB/s: 2 s, four times the retry budget, in one attempt.
		{name: "steady slow range", size: 256 << 10, rate: 128 << 10, atLeast: 1500 * time.Millisecond},
		{name: "stalled once", size: 64 << 10, stalls: 1},
		{name: "stalled for good", size: 64 << 10, stalls: 1000, wantErr: "timed out: no data for 300ms"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := testData(tc.size)
			s := NewShapedServer(data)
			defer s.Close()
			ctx := context.Background()
			o, err := Open(ctx, s.URL(), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			s.Shape(0, tc.rate)
			s.StallNext(tc.stalls)
			var reported []int
			buf := make([]byte, len(data))
			start := time.Now()
			err = o.(ProgressReader).ReadAtProgress(ctx, buf, 0, func(n int) { reported = append(reported, n) })
			took := time.Since(start)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "no progress") {
					t.Fatalf("err %v, want one saying %q and no progress", err, tc.wantErr)
				}
				if took > 5*time.Second {
					t.Fatalf("gave up after %v, want about idle timeout + retry budget", took)
				}
				return
			}
			if err != nil {
				t.Fatalf("read failed after %v: %v", took, err)
			}
			if !bytes.Equal(buf, data) {
				t.Fatal("wrong bytes")
			}
			if took < tc.atLeast {
				t.Fatalf("took %v, want at least %v (is the link shaped?)", took, tc.atLeast)
			}
			if len(reported) < 2 || reported[len(reported)-1] != len(data) {
				t.Fatalf("progress reported %v, want several steps ending at %d", reported, len(data))
			}
		})
	}
}
