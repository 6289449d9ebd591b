package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestRowsAndReport(t *testing.T) {
	o := options{links: []int64{8e6, 80e6}, rtts: []time.Duration{20 * time.Millisecond}, runs: 3, needed: 1e6,
		modes: []string{"profiled", "download-first", "peer"}, out: filepath.Join(t.TempDir(), "r")}
	var samples []sample
	for _, bits := range o.links {
		for run, ttfr := range []float64{1.2, 1.0, 5.0} { // the median ignores the outlier
			scale := 8e6 / float64(bits)
			samples = append(samples,
				sample{Mode: "profiled", LinkBits: bits, RTT: 0.02, Run: run, TTFR: ttfr * scale, Index: 0.1, Resumed: 0.3, BytesBefore: 1e6},
				sample{Mode: "download-first", LinkBits: bits, RTT: 0.02, Run: run, TTFR: 10 * ttfr * scale},
				sample{Mode: "peer", LinkBits: bits, RTT: 0.02, Run: run, TTFR: 20 * ttfr * scale})
		}
	}
	rs := rows(o, samples)
	tests := []struct {
		mode      string
		bits      int64
		ttfr, lim float64
	}{
		// No local mode: limit = resume 0.2 s + 1 MB at the link's speed + one RTT.
		{"profiled", 8e6, 1.2, 0.2 + 1 + 0.02},
		{"peer", 8e6, 24, 0.2 + 1 + 0.02},
		{"profiled", 80e6, 0.12, 0.2 + 0.1 + 0.02},
		{"download-first", 80e6, 1.2, 0.2 + 0.1 + 0.02},
	}
	for _, tc := range tests {
		r, ok := find(rs, tc.mode, tc.bits, 0.02)
		if !ok {
			t.Fatalf("no row for %s at %d bit/s", tc.mode, tc.bits)
		}
		if !near(r.TTFR.Median, tc.ttfr) || !near(r.Limit, tc.lim) {
			t.Errorf("%s at %d bit/s: TTFR median %v, limit %v; want %v, %v", tc.mode, tc.bits, r.TTFR.Median, r.Limit, tc.ttfr, tc.lim)
		}
	}
	if err := report(o, samples); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(o.out + ".md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		// profiled ÷ limit 1.2/1.22; profiled ÷ download-first 0.1; download-first ÷ profiled 10; peer ÷ profiled 20
		"| 8 Mbit/s | 0.98 ✓ | – | 0.10 ✓ | 10.0 | 20.0 |",
		"not measured in this run (no local mode)", "Where the time goes", "(RAM; disk lazy)",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(string(md), "RTT sweep") {
		t.Errorf("a run with one RTT has an RTT sweep table:\n%s", md)
	}
	for _, ext := range []string{".json", ".svg"} {
		if st, err := os.Stat(o.out + ext); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", ext, err)
		}
	}
}

// TestLimit: the limit is the larger of the local TTFR (median of the local runs, whatever
// their link) and resume + needed bytes at link speed + one RTT.
func TestLimit(t *testing.T) {
	tests := []struct {
		name   string
		local  []float64 // TTFRs of the local runs; none: not measured
		bits   int64
		rtt    float64
		resume float64 // of the fastest early-start run
		want   float64
	}{
		{"no local: the link term", nil, 8e6, 0.02, 0.1, 0.1 + 1 + 0.02},
		{"local below the link term", []float64{0.5, 0.4, 0.6}, 8e6, 0.02, 0.1, 0.1 + 1 + 0.02},
		{"local above the link term", []float64{0.5, 0.4, 0.6}, 1e9, 0.02, 0.1, 0.5},
		{"local's median, not its fastest", []float64{0.3, 0.9, 0.8}, 1e9, 0, 0.1, 0.8},
		{"the RTT counts once", nil, 1e9, 0.1, 0.1, 0.1 + 0.008 + 0.1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := options{links: []int64{tc.bits}, rtts: []time.Duration{time.Duration(tc.rtt * float64(time.Second))},
				needed: 1e6, modes: []string{"profiled", "local"}}
			samples := []sample{{Mode: "profiled", LinkBits: tc.bits, RTT: tc.rtt, TTFR: 2, Index: 1, Resumed: 1 + tc.resume}}
			for _, l := range tc.local {
				// A local resume slower than the profiled one: the fastest counts.
				samples = append(samples, sample{Mode: "local", LinkBits: tc.bits, RTT: tc.rtt, TTFR: l, Index: 0.01, Resumed: 0.01 + tc.resume + 0.05})
			}
			r, ok := find(rows(o, samples), "profiled", tc.bits, tc.rtt)
			if !ok {
				t.Fatal("no profiled row")
			}
			if !near(r.Limit, tc.want) {
				t.Errorf("limit %v, want %v", r.Limit, tc.want)
			}
		})
	}
}

// TestChecks: the ratio columns and their goals, and the misses per profiled run.
func TestChecks(t *testing.T) {
	tests := []struct {
		name                           string
		profiled, unprofiled, download float64
		touched, missed, outside       [3]int64
		want                           []string
	}{
		{"all met", 0.5, 1.0, 6.0, [3]int64{600, 600, 600}, [3]int64{0, 10, 20}, [3]int64{0, 1, 2},
			[]string{"| 0.17 ✓ | 0.08 ✓ |", "| 12.0 |", "| 0/600 (0) 10/600 (1) 20/600 (2) | 98.33 % | 99.83 % ✓ |",
				"Over all 3 profiled syntheses, the profile held 99.83 % ✓ of the overlay chunks", "98.33 % were local"}},
		{"lazy loses to eager", 6.6, 7.0, 6.0, [3]int64{100, 100, 100}, [3]int64{5, 5, 6}, [3]int64{5, 5, 6},
			[]string{"| 1.17 ✗ | 1.10 ✗ |", "| 0.9 |", "| 5/100 (5) 5/100 (5) 6/100 (6) | 94.67 % | 94.67 % ✗ |"}},
		// A VM that outruns its link waits for working-set chunks on their way: not the profile's misses.
		{"outran the link", 0.5, 1.0, 6.0, [3]int64{100, 100, 100}, [3]int64{50, 60, 70}, [3]int64{1, 0, 0},
			[]string{"| 50/100 (1) 60/100 (0) 70/100 (0) | 40.00 % | 99.67 % ✓ |"}},
		{"nothing touched", 0.5, 1.0, 6.0, [3]int64{}, [3]int64{}, [3]int64{}, []string{"| 0/0 (0) 0/0 (0) 0/0 (0) | 100.00 % | 100.00 % ✓ |"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Limit: resume 0.1 + 1 MB at 80 Mbit/s (0.1) + RTT 0.02 = 0.22; the local TTFR 3 s
			// dominates.
			o := options{links: []int64{80e6}, rtts: []time.Duration{20 * time.Millisecond}, runs: 3, needed: 1e6,
				modes: []string{"profiled", "unprofiled", "download-first", "local"}}
			var samples []sample
			for run := range 3 {
				samples = append(samples,
					sample{Mode: "profiled", LinkBits: 80e6, RTT: 0.02, Run: run, TTFR: tc.profiled, Index: 0.1, Resumed: 0.2,
						Touched: tc.touched[run], Missed: tc.missed[run], Outside: tc.outside[run]},
					sample{Mode: "unprofiled", LinkBits: 80e6, RTT: 0.02, Run: run, TTFR: tc.unprofiled, Index: 0.1, Resumed: 0.2},
					sample{Mode: "download-first", LinkBits: 80e6, RTT: 0.02, Run: run, TTFR: tc.download},
					sample{Mode: "local", LinkBits: 80e6, RTT: 0.02, Run: run, TTFR: 3, Index: 0.01, Resumed: 0.11})
			}
			md := markdown(o, rows(o, samples), terms(o, samples))
			for _, want := range tc.want {
				if !strings.Contains(md, want) {
					t.Errorf("report lacks %q:\n%s", want, md)
				}
			}
			if ratio := tc.profiled / 3; !strings.Contains(md, "| 80 Mbit/s | "+mark(ratio, ratio <= goalLimit)+" |") {
				t.Errorf("report lacks profiled ÷ limit %.2f (the local TTFR, 3 s, is the limit):\n%s", ratio, md)
			}
		})
	}
}

// TestRTTSweep: growth from the lowest RTT to the highest, in seconds and in RTTs.
func TestRTTSweep(t *testing.T) {
	rtts := []time.Duration{50 * time.Millisecond, 0, 20 * time.Millisecond, 100 * time.Millisecond} // any order
	tests := []struct {
		name      string
		perRTT    float64 // profiled TTFR = 0.4 s + perRTT × RTT
		wantCells []string
	}{
		{"two RTTs per RTT: met", 2, []string{"| 38 Mbit/s | profiled | 0.40 | 0.44 | 0.50 | 0.60 | 0.20 | 2.00 ✓ |"}},
		{"five RTTs per RTT: missed", 5, []string{"| 38 Mbit/s | profiled | 0.40 | 0.50 | 0.65 | 0.90 | 0.50 | 5.00 ✗ |"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := options{links: []int64{38e6}, rtts: rtts, runs: 1, needed: 1e6, modes: []string{"profiled", "download-first"}}
			var samples []sample
			for _, d := range rtts {
				r := d.Seconds()
				samples = append(samples,
					sample{Mode: "profiled", LinkBits: 38e6, RTT: r, TTFR: 0.4 + tc.perRTT*r},
					sample{Mode: "download-first", LinkBits: 38e6, RTT: r, TTFR: 6 + 24*r})
			}
			rs := rows(o, samples)
			secs, inRTTs, ok := growth(rs, "download-first", 38e6, rtts)
			if !ok || !near(secs, 2.4) || !near(inRTTs, 24) {
				t.Errorf("download-first growth %v s, %v RTTs (%v); want 2.4 s, 24 RTTs", secs, inRTTs, ok)
			}
			md := markdown(o, rs, terms(o, samples))
			for _, want := range append(tc.wantCells, "| link | mode | RTT 0 ms | RTT 20 ms | RTT 50 ms | RTT 100 ms | growth s | growth in RTTs |",
				"| 38 Mbit/s, RTT 50 ms | profiled |") {
				if !strings.Contains(md, want) {
					t.Errorf("report lacks %q:\n%s", want, md)
				}
			}
		})
	}
}

// TestRerenderOlderReport: a JSON report from before the RTT sweep (one RTT, none in its
// samples) renders again.
func TestRerenderOlderReport(t *testing.T) {
	dir := t.TempDir()
	old := map[string]any{"title": "old", "rtt_s": 0.02, "runs": 1, "links_bits_per_s": []int64{38e6},
		"modes": []string{"profiled", "download-first"}, "needed_bytes": 1e6,
		"samples": []map[string]any{
			{"mode": "profiled", "link_bits_per_s": 38e6, "ttfr_s": 0.5, "index_s": 0.1, "resumed_s": 0.2},
			{"mode": "download-first", "link_bits_per_s": 38e6, "ttfr_s": 6.0},
		}}
	b, _ := json.Marshal(old)
	if err := os.WriteFile(filepath.Join(dir, "old.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := rerender(filepath.Join(dir, "old.json"), filepath.Join(dir, "new")); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "new.md"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "| 38 Mbit/s | profiled | 0.50 (0.50–0.50) |"; !strings.Contains(string(md), want) {
		t.Errorf("report lacks %q:\n%s", want, md)
	}
}

func TestProcParsing(t *testing.T) {
	stat := []byte("4242 (cloud let) (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 3 4 20 0 9 0 100 0 0\n")
	if cpu, err := statCPU(stat); err != nil || !near(cpu, 3.25) {
		t.Errorf("statCPU: %v, %v; want 3.25 s", cpu, err)
	}
	for _, bad := range []string{"4242 cloudlet S 1", "4242 (cloudlet) S 1 2 3", "4242 (c) S 1 2 3 4 5 6 7 8 9 10 x 75 0"} {
		if _, err := statCPU([]byte(bad)); err == nil {
			t.Errorf("statCPU(%q): no error", bad)
		}
	}
	status := []byte("Name:\tcloudlet\nVmPeak:\t  900 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n")
	if hwm, ok := vmHWM(status); !ok || hwm != 51200<<10 {
		t.Errorf("vmHWM: %d, %v; want %d", hwm, ok, 51200<<10)
	}
	if _, ok := vmHWM([]byte("Name:\tzombie\nState:\tZ (zombie)\n")); ok {
		t.Error("vmHWM of a zombie's status (no VmHWM line): ok")
	}
}

// TestHitRates: the profile's share is unknown, not 100 %, for runs that did not count what
// it missed (a report rendered again from JSON written before the count).
func TestHitRates(t *testing.T) {
	for _, tc := range []struct {
		name                string
		r                   row
		wantLocal, wantHeld float64 // wantHeld NaN: unknown
	}{
		{"counted", row{Touched: []int64{100, 100}, Missed: []int64{50, 30}, Outside: []int64{2, 0}}, 0.6, 0.99},
		{"not counted", row{Touched: []int64{100, 100}, Missed: []int64{50, 30}}, 0.6, math.NaN()},
		{"nothing touched", row{Touched: []int64{0}, Missed: []int64{0}}, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			local, held := tc.r.hitRates()
			if math.Abs(local-tc.wantLocal) > 1e-9 || math.IsNaN(tc.wantHeld) != math.IsNaN(held) ||
				!math.IsNaN(held) && math.Abs(held-tc.wantHeld) > 1e-9 {
				t.Fatalf("local %v, held %v; want %v, %v", local, held, tc.wantLocal, tc.wantHeld)
			}
			if math.IsNaN(held) && percentMark(held) != "–" {
				t.Fatalf("an unknown share renders as %q, want –", percentMark(held))
			}
		})
	}
}
