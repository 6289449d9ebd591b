package main

import (
	"fmt"
	"math"
	"strings"
)

// plot draws TTFR by link setting as grouped bars, one colour per mode, on a log scale.
func plot(o options, rs []row) string {
	const w, h, left, bottom, top = 720, 360, 60, 50, 30
	colours := map[string]string{"profiled": "#1b9e77", "unprofiled": "#7570b3", "download-first": "#d95f02", "peer": "#e7298a", "local": "#66a61e"}
	maxT := 0.0
	for _, r := range rs {
		maxT = max(maxT, r.TTFR.Max)
	}
	logMax := math.Max(0, math.Ceil(math.Log10(math.Max(maxT, 1))))
	y := func(t float64) float64 {
		frac := (math.Log10(max(t, 0.01)) + 2) / (logMax + 2) // axis from 0.01 s
		return float64(h-bottom) - frac*float64(h-bottom-top)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="14">Time to first response by link (log scale; RTT %v)</text>`+"\n", left, rttList(o))
	for e := -2.0; e <= logMax; e++ {
		t := math.Pow(10, e)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%g s</text>`+"\n",
			left, w-10, y(t), y(t), left-5, y(t)+4, t)
	}
	type group struct {
		bits int64
		rtt  float64
	}
	var groups []group
	for _, bits := range o.links {
		for _, d := range o.rtts {
			groups = append(groups, group{bits, d.Seconds()})
		}
	}
	groupW := float64(w-left-20) / float64(len(groups))
	barW := groupW / float64(len(o.modes)+1)
	for gi, g := range groups {
		x0 := float64(left) + float64(gi)*groupW + barW/2
		for mi, mode := range o.modes {
			r, ok := find(rs, mode, g.bits, g.rtt)
			if !ok {
				continue
			}
			x := x0 + float64(mi)*barW
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %.2f s</title></rect>`+"\n",
				x, y(r.TTFR.Median), barW*0.9, float64(h-bottom)-y(r.TTFR.Median), colours[mode], mode, r.TTFR.Median)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" font-size="10">%s</text>`+"\n", x0+barW*float64(len(o.modes)-1)/2, h-bottom+18, label(o, g.bits, g.rtt))
	}
	for mi, mode := range o.modes {
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			left+mi*130, h-16, colours[mode], left+mi*130+16, h-6, mode)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func rttList(o options) string {
	s := make([]string, len(o.rtts))
	for i, d := range o.rtts {
		s[i] = msLabel(d.Seconds())
	}
	return strings.Join(s, ", ")
}
