package synthesis

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseRate reads a link rate as bytes per second: "38Mbit", "1Gbit", "100Mbps" (bits) or
// "5MB", "800kB", "1000000" (bytes), with an optional "/s".
func ParseRate(s string) (int64, error) {
	t := strings.TrimSuffix(strings.ToLower(s), "/s")
	mult := 1.0
	for _, u := range []struct {
		suffix string
		m      float64
	}{{"gbit", 1e9 / 8}, {"mbit", 1e6 / 8}, {"kbit", 1e3 / 8}, {"gbps", 1e9 / 8}, {"mbps", 1e6 / 8}, {"kbps", 1e3 / 8},
		{"gb", 1e9}, {"mb", 1e6}, {"kb", 1e3}, {"b", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.m
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("rate %q: want e.g. 38Mbit or 5MB (per second)", s)
	}
	return int64(v * mult), nil
}
