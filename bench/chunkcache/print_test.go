package main

import (
	"strings"
	"testing"
)

func TestPrintRow(t *testing.T) {
	// sizes: v1, v2; fetched and head per case, in case order.
	mk := func(v1, v2 int64, fetched [nCases]int64) measures {
		var ms measures
		for i := range ms.cases {
			ms.cases[i] = result{size: v2, fetched: fetched[i], head: 100}
		}
		ms.cases[caseV1].size = v1
		ms.cov = cover{wholeBlobs: 2, blobs: 24}
		return ms
	}
	tests := []struct {
		name string
		ms   measures
		want string
	}{
		{"grown", mk(1000, 5000, [nCases]int64{4100, 1100, 5100, 100}),
			"| 1, profiled | 1000 | 5000 | 4000 | 100 | 4000 | 5000 | 0 | 1.25 | 2 of 24 |\n"},
		{"not grown", mk(5000, 5000, [nCases]int64{4100, 4100, 100, 100}),
			"| 1, profiled | 5000 | 5000 | 0 | 100 | 4000 | 0 | 0 | – | 2 of 24 |\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			printRow(&b, "1, profiled", tt.ms)
			if got := b.String(); got != tt.want {
				t.Errorf("row: got %q, want %q", got, tt.want)
			}
			var h strings.Builder
			printHeader(&h)
			head := strings.Split(h.String(), "\n")[0]
			if got, want := strings.Count(b.String(), "|"), strings.Count(head, "|"); got != want {
				t.Errorf("row has %d bars, header %d", got, want)
			}
		})
	}
}
