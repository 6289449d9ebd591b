package synthesis

import (
	"testing"
	"time"
)

// TestMeasureRoundTrip: the bytes a round trip moves come from the rate after the first bytes
// arrived, counting only what arrived after them.
func TestMeasureRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name           string
		size, firstN   int
		latency, after time.Duration
		want           int64 // 0: no measure
	}{
		{"half came with the first read", 1000, 500, 100 * time.Millisecond, 100 * time.Millisecond, 500},
		{"a little came first", 1000, 100, 100 * time.Millisecond, 300 * time.Millisecond, 300},
		{"all in one piece", 1000, 1000, 100 * time.Millisecond, 100 * time.Millisecond, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &Fetcher{}
			now := time.Now()
			s := runStream{f: f, buf: make([]byte, tc.size), firstN: tc.firstN,
				firstBytes: now.Add(-tc.after), start: now.Add(-tc.after - tc.latency)}
			s.measure()
			if tc.want == 0 {
				if f.perRTT != 0 {
					t.Errorf("perRTT %d, want no measure", f.perRTT)
				}
				return
			}
			// The time since firstBytes grows while the test runs: allow 10 %.
			if f.perRTT < tc.want*9/10 || f.perRTT > tc.want {
				t.Errorf("perRTT %d, want about %d", f.perRTT, tc.want)
			}
		})
	}
}
