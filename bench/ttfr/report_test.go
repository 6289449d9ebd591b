package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRowsAndReport(t *testing.T) {
	o := options{links: []int64{8e6, 80e6}, rtt: 20 * time.Millisecond, runs: 3, needed: 1e6,
		modes: []string{"profiled", "download-first", "peer"}, out: filepath.Join(t.TempDir(), "r")}
	var samples []sample
	for _, bits := range o.links {
		for run, ttfr := range []float64{1.2, 1.0, 5.0} { // the median ignores the outlier
			scale := 8e6 / float64(bits)
			samples = append(samples,
				sample{Mode: "profiled", LinkBits: bits, Run: run, TTFR: ttfr * scale, Index: 0.1, Resumed: 0.3, BytesBefore: 1e6},
				sample{Mode: "download-first", LinkBits: bits, Run: run, TTFR: 10 * ttfr * scale},
				sample{Mode: "peer", LinkBits: bits, Run: run, TTFR: 20 * ttfr * scale})
		}
	}
	rs := rows(o, samples)
	tests := []struct {
		mode      string
		mbit      int64
		ttfr, lim float64
	}{
		// limit = resume 0.2 s + 1 MB at the link's speed + one RTT
		{"profiled", 8, 1.2, 0.2 + 1 + 0.02},
		{"peer", 8, 24, 0.2 + 1 + 0.02},
		{"profiled", 80, 0.12, 0.2 + 0.1 + 0.02},
		{"download-first", 80, 1.2, 0.2 + 0.1 + 0.02},
	}
	for _, tc := range tests {
		r, ok := find(rs, tc.mode, tc.mbit)
		if !ok {
			t.Fatalf("no row for %s at %d Mbit/s", tc.mode, tc.mbit)
		}
		if math.Abs(r.TTFR.Median-tc.ttfr) > 1e-9 || math.Abs(r.Limit-tc.lim) > 1e-9 {
			t.Errorf("%s at %d Mbit/s: TTFR median %v, limit %v; want %v, %v", tc.mode, tc.mbit, r.TTFR.Median, r.Limit, tc.ttfr, tc.lim)
		}
	}
	if err := report(o, samples); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(o.out + ".md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| 8 Mbit/s | 0.98 | 10.0 | 20.0 |", "Where the time goes", "(RAM; disk lazy)"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	for _, ext := range []string{".json", ".svg"} {
		if st, err := os.Stat(o.out + ext); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", ext, err)
		}
	}
}
