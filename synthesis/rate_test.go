package synthesis

import "testing"

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"38Mbit", 4750000, true}, {"1Gbit", 125000000, true}, {"5MB", 5000000, true},
		{"100mbps", 12500000, true}, {"1000", 1000, true}, {"fast", 0, false}, {"-1Mbit", 0, false}, {"", 0, false},
	}
	for _, tc := range tests {
		got, err := ParseRate(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}
